//! Prompt templates published as REST endpoints: `POST <path>` with
//! `{"variables": {...}}` renders the template and asks the template's model, answering
//! `{"output": "...", "usage": {...}}`.
//!
//! Templates use `{{name}}` placeholders (spaces inside the braces allowed). They are parsed
//! when the config is loaded, so a broken template is a config error, and a request missing
//! variables gets a 400 that names every missing one.

// Templates are parsed by config validation, so the type lives with the config.
pub use crate::config::prompt::Template;
