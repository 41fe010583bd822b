//! Reading the YAML text into the file types, reporting every type error in the document
//! instead of only the first.
//!
//! serde stops at the first value it cannot read. An operator fixing a file one error per
//! run wastes a deploy cycle per typo, so when the typed read fails Levee reads the document
//! as a generic YAML tree, and repeats: read it into the file types, note where and why that
//! failed, cut the offending node out of the tree (the smallest one that explains the error:
//! the bad value's key, an unknown key, a list item), and read again. Each cut is
//! remembered, so that a later error, or one found by the semantic checks that run on what
//! is left, is still reported at its place in the original file (list items after a cut one
//! have moved up). A YAML syntax error still stops everything: there is no tree to cut.
//!
//! What is cut can cause problems of its own in the checks that follow (a route whose `match`
//! was cut takes every request); those are reported too, and go away with the first fix.

use std::collections::HashMap;

use serde_yaml_ng::Value;

use super::file::ConfigFile;
use super::source_map::LazySourceMap;
use super::{ConfigError, ConfigErrors};

/// At most this many type errors are collected from one file (each costs one more read).
const MAX_TYPE_ERRORS: usize = 100;

/// And for at most this long: each read of a file of 100,000 routes takes a few tenths of a
/// second, and a check (or a reload) must answer in bounded time whatever the file.
const SALVAGE_TIME: std::time::Duration = std::time::Duration::from_secs(3);

/// One type error: the path of the node it is about (in the original document), the path
/// to name in the message, whether the position to show is the key's (an unknown key), and
/// the message. `unlocated` when serde could not say where (a key that is not a string).
#[derive(Debug)]
struct TypeError {
    unlocated: bool,
    path: String,
    shown: String,
    at_key: bool,
    message: String,
}

/// Reads the file types from `text`: the typed read when it succeeds (the usual case, and
/// the fastest), else every type error the document has (`parse::salvage`) and whatever
/// could still be read, for the semantic checks. A YAML syntax error stops the read.
pub(super) fn read(
    text: &str,
    name: &str,
    map: &LazySourceMap<'_>,
) -> Result<(Option<ConfigFile>, Vec<ConfigError>, Cuts), ConfigErrors> {
    if text.trim().is_empty() {
        return Ok((Some(ConfigFile::default()), Vec::new(), Cuts::default()));
    }
    let first = match serde_yaml_ng::from_str::<ConfigFile>(text) {
        Ok(file) => return Ok((Some(file), Vec::new(), Cuts::default())),
        Err(first) => first,
    };
    let tree: serde_yaml_ng::Value = match serde_yaml_ng::from_str(text) {
        Ok(tree) => tree,
        Err(syntax) => {
            let mut error = serde_error(&syntax, name);
            error
                .message
                .push_str(" (a YAML syntax error stops the check here: fix it to see any other problems)");
            return Err(ConfigErrors(vec![error]));
        }
    };
    let salvaged = salvage(tree);
    let mut errors: Vec<ConfigError> = salvaged
        .errors
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if e.unlocated && i == 0 {
                // serde could not name a path, but the typed read knows where it was.
                return serde_error(&first, name);
            }
            let pos = if e.at_key {
                map.key(&e.path)
            } else {
                map.value(&e.path)
            };
            let mut message = if e.shown.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.shown, e.message)
            };
            if let Some(rewritten) = unknown_key_message(&message) {
                message = rewritten;
            }
            ConfigError {
                file: name.to_string(),
                line: pos.line,
                col: pos.col,
                message,
            }
        })
        .collect();
    if errors.is_empty() {
        // The generic read saw nothing wrong where the typed one did: report the typed one.
        errors.push(serde_error(&first, name));
    }
    Ok((salvaged.file, errors, salvaged.cuts))
}

/// Rewrites serde's message into ours, adding a "did you mean" for unknown keys.
fn serde_error(error: &serde_yaml_ng::Error, file: &str) -> ConfigError {
    let (line, col) = error.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
    let mut message = error.to_string();
    // serde_yaml appends " at line L column C"; we print the position up front instead.
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    if let Some(rewritten) = unknown_key_message(&message) {
        message = rewritten;
    }
    ConfigError {
        file: file.to_string(),
        line,
        col,
        message,
    }
}

/// The items cut from lists, by the list's path in the original document: to translate the
/// paths of what is left back to where they were written.
#[derive(Debug, Default)]
pub(super) struct Cuts {
    removed: HashMap<String, Vec<usize>>,
    /// Keys read under another name (a typo read as the key it was meant to be): the path
    /// with the new name, and the path as written, both in the original document.
    renamed: Vec<(String, String)>,
}

impl Cuts {
    /// `path` (in the document as it is after the cuts) as it was written in the file.
    pub fn original(&self, path: &str) -> String {
        if self.removed.is_empty() && self.renamed.is_empty() {
            return path.to_string();
        }
        let mut out = self.original_indices(path);
        for (read_as, written) in &self.renamed {
            let below = out
                .strip_prefix(read_as.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
                .map(str::to_string);
            if let Some(rest) = below {
                out = format!("{written}{rest}");
            }
        }
        out
    }

    /// `path` with its list indices translated back across the cut items.
    fn original_indices(&self, path: &str) -> String {
        if self.removed.is_empty() {
            return path.to_string();
        }
        let mut out = String::with_capacity(path.len());
        let mut rest = path;
        while let Some(open) = rest.find('[') {
            let (head, tail) = rest.split_at(open);
            out.push_str(head);
            let Some(close) = tail.find(']') else {
                break;
            };
            let digits = tail.get(1..close).unwrap_or_default();
            match digits.parse::<usize>() {
                Ok(index) => {
                    let original = self.original_index(&out, index);
                    out.push_str(&format!("[{original}]"));
                }
                Err(_) => out.push_str(tail.get(..=close).unwrap_or_default()),
            }
            rest = tail.get(close + 1..).unwrap_or_default();
        }
        out.push_str(rest);
        out
    }

    /// The original index of what is now item `index` of the list at `list` (original path).
    fn original_index(&self, list: &str, index: usize) -> usize {
        let Some(removed) = self.removed.get(list) else {
            return index;
        };
        // `removed` is sorted: every cut item at or before the answer shifts it by one.
        let mut original = index;
        for &cut in removed {
            if cut <= original {
                original += 1;
            } else {
                break;
            }
        }
        original
    }

    fn record(&mut self, list: String, original: usize) {
        let removed = self.removed.entry(list).or_default();
        let at = removed.partition_point(|&i| i < original);
        removed.insert(at, original);
    }
}

/// The outcome of reading a document whose typed read failed.
#[derive(Debug)]
struct Salvaged {
    /// The file types read from what was left, if the cuts got that far.
    file: Option<ConfigFile>,
    errors: Vec<TypeError>,
    cuts: Cuts,
}

/// One step of a path into the tree.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn steps(path: &serde_path_to_error::Path) -> Option<Vec<Step>> {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|segment| match segment {
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Enum { variant } => Some(Step::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

fn text_of(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(key) if out.is_empty() => out.push_str(key),
            Step::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Step::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// Reads `tree` again and again, cutting out what each failure is about (see the module
/// docs).
fn salvage(mut tree: Value) -> Salvaged {
    let mut errors = Vec::new();
    let mut cuts = Cuts::default();
    // Keys this process cut, by the original path of their mapping: a "missing field" for
    // one of them is our doing, not the author's.
    let mut cut_keys: Vec<(String, String)> = Vec::new();
    let mut last: Option<(String, String)> = None;
    let started = std::time::Instant::now();
    while errors.len() < MAX_TYPE_ERRORS {
        if started.elapsed() > SALVAGE_TIME {
            errors.push(TypeError {
                unlocated: false,
                path: String::new(),
                shown: String::new(),
                at_key: false,
                message: format!(
                    "stopped looking for more problems after {} s: fix these and check again",
                    SALVAGE_TIME.as_secs()
                ),
            });
            break;
        }
        let error = match serde_path_to_error::deserialize::<_, ConfigFile>(&tree) {
            Ok(file) => {
                return Salvaged {
                    file: Some(file),
                    errors,
                    cuts,
                }
            }
            Err(error) => error,
        };
        let message = error.inner().to_string();
        let Some(mut at) = steps(error.path()) else {
            errors.push(TypeError {
                unlocated: true,
                path: String::new(),
                shown: String::new(),
                at_key: false,
                message,
            });
            break;
        };
        // The text reader takes any scalar where a string is expected (`x-version: 2`); the
        // tree reader has typed it already. Read it as the text it was, and say nothing.
        if message.contains("expected a string") && stringify(&mut tree, &at, &message) {
            continue;
        }
        let here = cuts.original(&text_of(&at));
        if last.as_ref() == Some(&(here.clone(), message.clone())) {
            break; // cutting did not help: stop rather than loop
        }
        last = Some((here.clone(), message.clone()));
        let unknown = quoted_after(&message, "unknown field `").map(str::to_string);
        let missing = quoted_after(&message, "missing field `");
        match (unknown.as_deref(), missing) {
            (Some(key), _) => {
                // The path may or may not end at the unknown key already; the message names
                // the mapping it is in, the position is the key's.
                if !matches!(at.last(), Some(Step::Key(last)) if last == key) {
                    at.push(Step::Key(key.to_string()));
                }
                let mapping = at.get(..at.len().saturating_sub(1)).unwrap_or_default();
                // A typo of a key the mapping lacks is read as that key from now on, so
                // that the checks after it judge what the author meant ("needs an
                // `upstream`" would only repeat the typo's error).
                let meant = suggestion(&message, key);
                errors.push(TypeError {
                    unlocated: false,
                    path: cuts.original(&text_of(&at)),
                    shown: cuts.original(&text_of(mapping)),
                    at_key: true,
                    message,
                });
                if let Some(meant) = meant {
                    if rename(&mut tree, &at, &meant) {
                        let written = cuts.original(&text_of(&at));
                        let parent = written.strip_suffix(key).unwrap_or(&written).to_string();
                        cuts.renamed.push((format!("{parent}{meant}"), written));
                        continue;
                    }
                }
            }
            (_, Some(key)) if cut_keys.contains(&(here.clone(), key.to_string())) => {
                // The author's error was the value we cut; the mapping cannot stand
                // without it, so it goes too (reported once, as that value's error).
            }
            _ => errors.push(TypeError {
                unlocated: false,
                shown: here.clone(),
                path: here,
                at_key: false,
                message,
            }),
        }
        if at.is_empty() {
            break; // the document itself is wrong: nothing smaller to cut
        }
        if let Some(cut_key) = cut(&mut tree, &at, &mut cuts) {
            cut_keys.push(cut_key);
        }
    }
    Salvaged {
        file: None,
        errors,
        cuts,
    }
}

/// serde's "unknown field" message rewritten as Levee words it, with a "did you mean".
pub(super) fn unknown_key_message(message: &str) -> Option<String> {
    let start = message.find("unknown field `")?;
    let prefix = message.get(..start).unwrap_or("");
    let rest = message.get(start + "unknown field `".len()..)?;
    let key = rest.get(..rest.find('`')?)?;
    let candidates: Vec<&str> = rest
        .split('`')
        .skip(2)
        .step_by(2)
        .filter(|c| !c.is_empty())
        .collect();
    let nearest = nearest(key, candidates.iter().copied());
    let mut out = format!("{prefix}unknown key `{key}`");
    match nearest {
        Some(best) => out.push_str(&format!(" (did you mean `{best}`?)")),
        None if !candidates.is_empty() => out.push_str(&format!("; valid keys: {}", candidates.join(", "))),
        None => {}
    }
    Some(out)
}

/// The candidate closest to `word`, when it is close enough to be a plausible typo.
pub(super) fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The key an unknown `key` was probably meant to be, from serde's list of expected keys.
fn suggestion(message: &str, key: &str) -> Option<String> {
    let expected = message.get(message.find("expected")?..)?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    nearest(key, candidates.into_iter()).map(str::to_string)
}

/// Replaces the number or boolean at `at` with its text (from serde's message: ``integer
/// `2`, expected a string``). False when there is no such scalar there.
fn stringify(tree: &mut Value, at: &[Step], message: &str) -> bool {
    let Some(text) = quoted_after(message, "`") else {
        return false;
    };
    let mut node = &mut *tree;
    for step in at {
        match child(node, step) {
            Some(next) => node = next,
            None => return false,
        }
    }
    if !matches!(node, Value::Number(_) | Value::Bool(_)) {
        return false;
    }
    *node = Value::String(text.to_string());
    true
}

/// Renames the key at `at` to `meant` if its mapping has no `meant` yet.
fn rename(tree: &mut Value, at: &[Step], meant: &str) -> bool {
    let Some((Step::Key(key), parent_steps)) = at.split_last() else {
        return false;
    };
    let mut node = &mut *tree;
    for step in parent_steps {
        match child(node, step) {
            Some(next) => node = next,
            None => return false,
        }
    }
    if let Value::Tagged(tagged) = node {
        node = &mut tagged.value;
    }
    let Value::Mapping(mapping) = node else {
        return false;
    };
    let target = Value::String(meant.to_string());
    if mapping.contains_key(&target) {
        return false;
    }
    let Some(found) = mapping
        .keys()
        .find(|k| key_text(k).as_deref() == Some(key.as_str()))
        .cloned()
    else {
        return false;
    };
    match mapping.remove(&found) {
        Some(value) => {
            mapping.insert(target, value);
            true
        }
        None => false,
    }
}

/// The text between `prefix` and the next backquote in `message`.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let start = message.find(prefix)? + prefix.len();
    let rest = message.get(start..)?;
    rest.get(..rest.find('`')?)
}

/// Removes the node at `at` from `tree`. Returns the (original mapping path, key) when a
/// mapping key was removed.
fn cut(tree: &mut Value, at: &[Step], cuts: &mut Cuts) -> Option<(String, String)> {
    let (last, parent_steps) = at.split_last()?;
    let parent_text = cuts.original(&text_of(parent_steps));
    let mut node = &mut *tree;
    for step in parent_steps {
        node = child(node, step)?;
    }
    if let Value::Tagged(tagged) = node {
        node = &mut tagged.value;
    }
    match (node, last) {
        (Value::Mapping(mapping), Step::Key(key)) => {
            let found = mapping
                .keys()
                .find(|k| key_text(k).as_deref() == Some(key.as_str()))?
                .clone();
            mapping.remove(&found);
            Some((parent_text, key.clone()))
        }
        (Value::Sequence(items), Step::Index(index)) if *index < items.len() => {
            let original = cuts.original_index(&parent_text, *index);
            items.remove(*index);
            cuts.record(parent_text, original);
            None
        }
        _ => None,
    }
}

fn child<'a>(node: &'a mut Value, step: &Step) -> Option<&'a mut Value> {
    match (node, step) {
        (Value::Mapping(mapping), Step::Key(key)) => mapping
            .iter_mut()
            .find(|(k, _)| key_text(k).as_deref() == Some(key.as_str()))
            .map(|(_, v)| v),
        (Value::Sequence(items), Step::Index(index)) => items.get_mut(*index),
        (Value::Tagged(tagged), step) => child(&mut tagged.value, step),
        _ => None,
    }
}

/// A mapping key as serde names it in a path.
fn key_text(key: &Value) -> Option<String> {
    match key {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_list_items_are_translated_back() {
        let mut cuts = Cuts::default();
        cuts.record("routes".into(), 1);
        cuts.record("routes".into(), 3);
        assert_eq!(cuts.original("routes[0].name"), "routes[0].name");
        assert_eq!(cuts.original("routes[1].name"), "routes[2].name");
        assert_eq!(cuts.original("routes[2]"), "routes[4]");
        assert_eq!(cuts.original("slos[1]"), "slos[1]");
        cuts.record("routes[4].match.methods".into(), 0);
        assert_eq!(
            cuts.original("routes[2].match.methods[0]"),
            "routes[4].match.methods[1]"
        );
    }

    #[test]
    fn unknown_key_suggests_nearest() {
        let msg = unknown_key_message(
            "routes[0]: unknown field `upstreem`, expected one of `name`, `match`, `upstream`, `strip_prefix`",
        )
        .unwrap();
        assert_eq!(
            msg,
            "routes[0]: unknown key `upstreem` (did you mean `upstream`?)"
        );
    }
}
