//! How a connector class turns what the configuration says about a
//! connector into its typed settings: the connection string, the tags,
//! the class's own fields of the connector's entry, and every mistake
//! found, each placed where the configuration can point at its line.

use super::{Params, SourceConfig};
use crate::tag::TagConfig;
use std::path::Path;
use std::sync::Arc;

/// What a connector class needs to validate its settings.
pub struct Setup<'a> {
    /// The connection string, split.
    pub params: Params,
    /// The connector's tags, in order.
    pub tags: &'a [TagConfig],
    /// The fields of the connector's entry that belong to its class.
    pub extras: Extras,
    /// The directory of the config file (relative paths resolve against it).
    pub base: &'a Path,
}

/// A class's typed settings, or every mistake found in them.
pub type Built = Result<Arc<dyn SourceConfig>, Vec<SetupError>>;

/// A class: its name in `connector=` and how its settings are built.
pub struct Class {
    /// The value of `connector=`, matched without regard to case.
    pub name: &'static str,
    /// Validates the settings, returning every error found.
    pub setup: fn(Setup<'_>) -> Built,
}

/// Where in a connector's entry a mistake lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// The connection string (a key in it, named in the message).
    Connection,
    /// A class field of the entry (`queries`), and the line within its
    /// text (1 for the field's own line).
    Field(String, usize),
    /// The connector's tag with this index.
    Tag(usize),
}

/// A connector setting or tag that does not validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError {
    /// Where.
    pub at: At,
    /// What is wrong.
    pub message: String,
}

impl SetupError {
    /// A fault of the connection string.
    pub fn setting(message: impl Into<String>) -> SetupError {
        SetupError {
            at: At::Connection,
            message: message.into(),
        }
    }

    /// A fault of tag `i`.
    pub fn tag(i: usize, message: impl Into<String>) -> SetupError {
        SetupError {
            at: At::Tag(i),
            message: message.into(),
        }
    }

    /// A fault of class field `key`.
    pub fn field(key: &str, message: impl Into<String>) -> SetupError {
        SetupError {
            at: At::Field(key.into(), 1),
            message: message.into(),
        }
    }
}

/// The fields of a connector's entry beyond the ones every connector has
/// (`queries` and `write_sql` of connector=Sql): their RON text, which
/// the class reads into its own types.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    fields: Vec<(String, String)>,
}

impl Extras {
    /// The fields as (key, RON text of the value).
    pub fn new(fields: Vec<(String, String)>) -> Extras {
        Extras { fields }
    }

    /// Field `key` read as `T`, if present; a value that does not read is
    /// an error placed at its line.
    pub fn take<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, SetupError> {
        let Some(at) = self.fields.iter().position(|(k, _)| k == key) else {
            return Ok(None);
        };
        let (key, text) = self.fields.remove(at);
        ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
            .from_str(&text)
            .map(Some)
            .map_err(|e| SetupError {
                at: At::Field(key.clone(), e.span.start.line.max(1)),
                message: format!("`{key}`: {}", e.code),
            })
    }

    /// Refuses the fields the class did not take.
    pub fn finish(self, class: &str, known: &[&str]) -> Vec<SetupError> {
        self.finish_for(&format!("connector={class}"), known)
    }

    /// Refuses the fields `what` (`connector=Sql`, `an mqtt output`) did
    /// not take.
    pub fn finish_for(self, what: &str, known: &[&str]) -> Vec<SetupError> {
        self.fields
            .into_iter()
            .map(|(k, _)| {
                SetupError::field(
                    &k,
                    format!(
                        "`{k}` is not a setting of {what}{}",
                        if known.is_empty() {
                            String::new()
                        } else {
                            format!(" (its own fields: {})", known.join(", "))
                        }
                    ),
                )
            })
            .collect()
    }
}
