//! Where each value of a YAML document sits, so that errors found after deserialization
//! (a dangling upstream name, a duplicate route) can still point at `FILE:LINE:COL`.
//!
//! serde tells us the position of the first syntax or type error, but semantic checks run on
//! typed values that have forgotten their origin. Rather than thread spans through every type,
//! we walk the parser's event stream once and remember the position of every node by its path
//! (`routes[1].match.path`).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

/// Positions of the nodes of one YAML document, keyed by path.
#[derive(Debug, Default)]
pub struct SourceMap {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
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
        walker.map
    }

    /// The position of the value at `path`, or of its nearest indexed ancestor, or 1:1.
    pub fn value(&self, path: &str) -> Position {
        let mut probe = path;
        loop {
            if let Some(pos) = self.values.get(probe) {
                return *pos;
            }
            match probe.rfind(['.', '[']) {
                Some(cut) => probe = &probe[..cut],
                None => return Position { line: 1, col: 1 },
            }
        }
    }

    /// The position of the key naming the value at `path`, falling back to the value.
    pub fn key(&self, path: &str) -> Position {
        self.keys.get(path).copied().unwrap_or_else(|| self.value(path))
    }
}

enum Frame {
    Mapping {
        path: String,
        key: Option<String>,
        key_pos: Position,
    },
    Sequence {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    map: SourceMap,
}

fn position(mark: Marker) -> Position {
    Position {
        line: mark.line(),
        col: mark.col() + 1,
    }
}

impl Walker {
    /// Path of the node that starts now, or `None` when the node is a mapping key.
    fn node_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Sequence { path, index }) => {
                let child = format!("{path}[{index}]");
                *index += 1;
                Some(child)
            }
            Some(Frame::Mapping { path, key, .. }) => match key.take() {
                None => None,
                Some(k) if path.is_empty() => Some(k),
                Some(k) => Some(format!("{path}.{k}")),
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = position(mark);
        let pending_key_pos = match self.stack.last() {
            Some(Frame::Mapping {
                key: Some(_),
                key_pos,
                ..
            }) => Some(*key_pos),
            _ => None,
        };
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
        let path = match self.node_path() {
            Some(path) => path,
            None => {
                // This node is a mapping key. A container used as a key (rare, never valid in
                // Levee's config) is indexed under a placeholder name.
                let name = match &event {
                    Event::Scalar(value, ..) => value.clone(),
                    _ => "?".to_string(),
                };
                if let Some(Frame::Mapping { key, key_pos, .. }) = self.stack.last_mut() {
                    *key = Some(name);
                    *key_pos = pos;
                }
                if matches!(event, Event::MappingStart(..) | Event::SequenceStart(..)) {
                    self.stack.push(Frame::Sequence {
                        path: "?".into(),
                        index: 0,
                    });
                }
                return;
            }
        };
        if let Some(key_pos) = pending_key_pos {
            self.map.keys.insert(path.clone(), key_pos);
        }
        self.map.values.insert(path.clone(), pos);
        match event {
            Event::MappingStart(..) => self.stack.push(Frame::Mapping {
                path,
                key: None,
                key_pos: pos,
            }),
            Event::SequenceStart(..) => self.stack.push(Frame::Sequence { path, index: 0 }),
            _ => {}
        }
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
