//! Prompt templates with `{{name}}` placeholders (spaces inside the braces allowed), as
//! given under `llm.prompts`: parsed when the config is loaded, so a broken template is a
//! config error, and rendered by the AI gateway's prompt endpoints, where a request missing
//! variables gets a 400 that names every missing one.

use serde_json::{Map, Value};

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Variable(String),
}

impl Template {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let (before, after) = rest.split_at(open);
            if !before.is_empty() {
                pieces.push(Piece::Text(before.to_owned()));
            }
            let after = after.get(2..).unwrap_or_default();
            let close = after
                .find("}}")
                .ok_or_else(|| format!("`{{{{` at byte {open} is never closed with `}}}}`"))?;
            let name = after.get(..close).unwrap_or_default().trim();
            let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`{{{{{name}}}}}` is not a variable name (letters, digits and `_`)"
                ));
            }
            pieces.push(Piece::Variable(name.to_owned()));
            rest = after.get(close + 2..).unwrap_or_default();
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template { pieces })
    }

    /// The variable names, each once, in order of first use.
    pub fn variables(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for piece in &self.pieces {
            if let Piece::Variable(name) = piece {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// The text with `values` filled in, or the names of the missing variables.
    pub fn render(&self, values: &Map<String, Value>) -> Result<String, Vec<String>> {
        let missing: Vec<String> = self
            .variables()
            .into_iter()
            .filter(|name| values.get(*name).is_none_or(Value::is_null))
            .map(str::to_owned)
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Variable(name) => match values.get(name) {
                    Some(Value::String(text)) => out.push_str(text),
                    Some(other) => out.push_str(&other.to_string()),
                    None => {}
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_and_names_every_missing_variable() {
        let template = Template::parse("Summarize in {{words}} words:\n\n{{ text }} ({{words}})").unwrap();
        assert_eq!(template.variables(), ["words", "text"]);
        let values = json!({"words": 10, "text": "Levee is a gateway."});
        assert_eq!(
            template.render(values.as_object().unwrap()).unwrap(),
            "Summarize in 10 words:\n\nLevee is a gateway. (10)"
        );
        let partial = json!({"words": 10});
        assert_eq!(
            template.render(partial.as_object().unwrap()),
            Err(vec!["text".to_owned()])
        );
        assert_eq!(
            template.render(&Map::new()),
            Err(vec!["words".to_owned(), "text".to_owned()])
        );
    }

    #[test]
    fn broken_templates_are_refused() {
        assert!(Template::parse("Hello {{name")
            .unwrap_err()
            .contains("never closed"));
        assert!(Template::parse("Hello {{ two words }}").is_err());
        assert!(Template::parse("Hello {{}}").is_err());
        assert_eq!(
            Template::parse("no variables").unwrap().variables(),
            Vec::<&str>::new()
        );
    }
}
