//! Errors that point at a place in a file the user wrote: the RON
//! configuration, a tag sheet's row, a script's line. `rtds check`, a
//! refused start and a refused reload print them as `file:line: what`,
//! all of them at once, so a sheet with forty mistakes is fixed in one go.

use std::fmt;
use std::path::PathBuf;

/// One error at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file at fault (the RON file, a tag sheet, a script).
    pub file: PathBuf,
    /// 1-based line (or row), 0 when the error is about the file as a whole.
    pub line: usize,
    /// What is wrong, naming the key or tag and what would be right.
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)
        }
    }
}

impl std::error::Error for Located {}

/// Every error found, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Errors(pub Vec<Located>);

impl Errors {
    /// Adds one.
    pub fn push(&mut self, file: impl Into<PathBuf>, line: usize, message: impl Into<String>) {
        self.0.push(Located {
            file: file.into(),
            line,
            message: message.into(),
        });
    }

    /// Whether none was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok(value)` when there is no error, else every error sorted by
    /// file and line (the order a user fixes them in).
    pub fn or<T>(mut self, value: T) -> Result<T, Errors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            self.0
                .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            Err(self)
        }
    }
}

impl From<Located> for Errors {
    fn from(e: Located) -> Errors {
        Errors(vec![e])
    }
}

impl fmt::Display for Errors {
    /// One error per line, then the count when there are several.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        if self.0.len() > 1 {
            write!(f, "\n{} errors", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}
