//! Where each value of a YAML document sits, so that errors found after deserialization
//! (a dangling upstream name, a duplicate route) can still point at `FILE:LINE:COL`.
//!
//! serde tells us the position of the first syntax or type error, but semantic checks run on
//! typed values that have forgotten their origin. Rather than thread spans through every type,
//! we walk the parser's event stream once and remember the position of every node, found
//! again later by its path (`routes[1].match.path`).

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

/// Positions of the nodes of one YAML document, as a tree shaped like the document.
///
/// A tree rather than a map from full path strings to positions: a file of 100,000 routes has
/// a million nodes, and hashing a freshly formatted path for each one cost more than parsing
/// the YAML. Here each node stores its position and its children; a mapping's children are
/// sorted by key once the document is read, so a lookup is a binary search per step.
#[derive(Debug, Default)]
pub struct SourceMap {
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    pos: Position,
    /// Where the key naming this node is, for a mapping's child.
    key_pos: Option<Position>,
    children: Children,
}

#[derive(Debug)]
enum Children {
    None,
    Sequence(Vec<u32>),
    /// Sorted by key after the walk.
    Mapping(Vec<(String, u32)>),
}

/// A [`SourceMap`] built the first time a position is asked for. A valid config asks for
/// none, and indexing a 10,000-route file was a fifth of a reload.
#[derive(Debug)]
pub struct LazySourceMap<'a> {
    text: &'a str,
    map: std::cell::OnceCell<SourceMap>,
}

impl<'a> LazySourceMap<'a> {
    pub fn new(text: &'a str) -> LazySourceMap<'a> {
        LazySourceMap {
            text,
            map: std::cell::OnceCell::new(),
        }
    }

    fn map(&self) -> &SourceMap {
        self.map.get_or_init(|| SourceMap::build(self.text))
    }

    /// [`SourceMap::value`].
    pub fn value(&self, path: &str) -> Position {
        self.map().value(path)
    }

    /// [`SourceMap::key`].
    pub fn key(&self, path: &str) -> Position {
        self.map().key(path)
    }
}

impl SourceMap {
    /// Indexes `text`. A document that does not parse yields an empty map (serde reports the
    /// syntax error itself).
    pub fn build(text: &str) -> SourceMap {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return SourceMap::default();
        }
        let mut map = SourceMap { nodes: walker.nodes };
        for node in &mut map.nodes {
            if let Children::Mapping(children) = &mut node.children {
                children.sort_by(|a, b| a.0.cmp(&b.0));
            }
        }
        map
    }

    /// The position of the value at `path`, or of its nearest indexed ancestor, or 1:1.
    pub fn value(&self, path: &str) -> Position {
        let (node, _) = self.find(path);
        node.map_or(Position { line: 1, col: 1 }, |n| n.pos)
    }

    /// The position of the key naming the value at `path`, falling back to the value.
    pub fn key(&self, path: &str) -> Position {
        match self.find(path) {
            (Some(node), true) => node.key_pos.unwrap_or(node.pos),
            (Some(node), false) => node.pos,
            (None, _) => Position { line: 1, col: 1 },
        }
    }

    /// The node at `path` (`routes[1].match.path`), or its nearest ancestor in the
    /// document; `true` when the whole path was found.
    fn find(&self, path: &str) -> (Option<&Node>, bool) {
        let Some(mut node) = self.nodes.first() else {
            return (None, false);
        };
        let mut rest = path;
        while !rest.is_empty() {
            let next = match (&node.children, rest.strip_prefix('[')) {
                (Children::Sequence(items), Some(tail)) => {
                    let Some(close) = tail.find(']') else {
                        return (Some(node), false);
                    };
                    let index = tail.get(..close).and_then(|d| d.parse::<usize>().ok());
                    rest = tail.get(close + 1..).unwrap_or_default();
                    index.and_then(|i| items.get(i))
                }
                (Children::Mapping(children), None) => {
                    let key_text = rest.strip_prefix('.').unwrap_or(rest);
                    match longest_key(children, key_text) {
                        Some((len, child)) => {
                            rest = key_text.get(len..).unwrap_or_default();
                            Some(child)
                        }
                        None => None,
                    }
                }
                _ => None,
            };
            match next.and_then(|&i| self.nodes.get(i as usize)) {
                Some(child) => node = child,
                None => return (Some(node), false),
            }
        }
        (Some(node), true)
    }
}

/// The longest key of `children` that `path` starts with, followed by the end, `.` or `[`
/// (keys may themselves contain dots, like `api.v1`); its length and node.
fn longest_key<'a>(children: &'a [(String, u32)], path: &str) -> Option<(usize, &'a u32)> {
    let ends = path
        .match_indices(['.', '['])
        .map(|(at, _)| at)
        .chain(std::iter::once(path.len()));
    let mut best = None;
    for end in ends {
        let Some(candidate) = path.get(..end) else {
            continue;
        };
        if let Ok(i) = children.binary_search_by(|(k, _)| k.as_str().cmp(candidate)) {
            best = children.get(i).map(|(_, node)| (end, node));
        }
    }
    best
}

/// What the walker is inside of.
enum Frame {
    /// A mapping node: `key` is the key whose value comes next (with its position).
    Mapping {
        node: u32,
        key: Option<(String, Position)>,
    },
    Sequence {
        node: u32,
    },
    /// A container used as a mapping key (never valid in Levee's config): skipped whole.
    Skipped,
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    nodes: Vec<Node>,
}

fn position(mark: Marker) -> Position {
    Position {
        line: mark.line(),
        col: mark.col() + 1,
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = position(mark);
        if matches!(self.stack.last(), Some(Frame::Skipped)) {
            match event {
                Event::MappingStart(..) | Event::SequenceStart(..) => self.stack.push(Frame::Skipped),
                Event::MappingEnd | Event::SequenceEnd => {
                    self.stack.pop();
                }
                _ => {}
            }
            return;
        }
        let is_node = matches!(
            event,
            Event::Scalar(..) | Event::Alias(_) | Event::MappingStart(..) | Event::SequenceStart(..)
        );
        if !is_node {
            if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                self.stack.pop();
            }
            return;
        }
        // A mapping waiting for a key: this node is the key.
        if let Some(Frame::Mapping { key: key @ None, .. }) = self.stack.last_mut() {
            match event {
                Event::Scalar(value, ..) => *key = Some((value, pos)),
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    *key = Some(("?".into(), pos));
                    self.stack.push(Frame::Skipped);
                }
                _ => *key = Some(("?".into(), pos)),
            }
            return;
        }
        let id = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        let mut key_pos = None;
        match self.stack.last_mut() {
            Some(Frame::Mapping { node, key }) => {
                if let Some((name, at)) = key.take() {
                    key_pos = Some(at);
                    if let Some(Node {
                        children: Children::Mapping(children),
                        ..
                    }) = self.nodes.get_mut(*node as usize)
                    {
                        children.push((name, id));
                    }
                }
            }
            Some(Frame::Sequence { node }) => {
                if let Some(Node {
                    children: Children::Sequence(items),
                    ..
                }) = self.nodes.get_mut(*node as usize)
                {
                    items.push(id);
                }
            }
            Some(Frame::Skipped) | None => {}
        }
        let children = match event {
            Event::MappingStart(..) => {
                self.stack.push(Frame::Mapping { node: id, key: None });
                Children::Mapping(Vec::new())
            }
            Event::SequenceStart(..) => {
                self.stack.push(Frame::Sequence { node: id });
                Children::Sequence(Vec::new())
            }
            _ => Children::None,
        };
        self.nodes.push(Node {
            pos,
            key_pos,
            children,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_paths() {
        let text =
            "listeners:\n  - name: a\n    bind: 1.2.3.4:5\nroutes:\n  - name: r\n    match: { path: /x }\n";
        let map = SourceMap::build(text);
        assert_eq!(map.value("listeners[0].bind"), Position { line: 3, col: 11 });
        assert_eq!(map.value("routes[0].match.path"), Position { line: 6, col: 20 });
        assert_eq!(map.value("routes[0]").line, 5);
        // Unknown paths fall back to their nearest ancestor.
        assert_eq!(map.value("routes[0].match.host"), Position { line: 6, col: 12 });
        assert_eq!(map.key("routes[0].match"), Position { line: 6, col: 5 });
    }

    #[test]
    fn broken_yaml_gives_empty_map() {
        let map = SourceMap::build("a: [1, 2\nb: }");
        assert_eq!(map.value("a"), Position { line: 1, col: 1 });
    }
}
