//! Secrets (tokens, passwords, URLs with credentials): a type whose `Debug` never shows the
//! value, and reading one that is given either inline or as a file holding it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret value (token, password). Its `Debug` never shows it, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself; call only where it is compared or sent, never where it is logged.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A file (a secret's, or the configuration) that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ReadError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|source| ReadError {
        path: path.to_path_buf(),
        source,
    })
}

/// A secret given as a setting (`token`) or as a file holding it (`token_file`): the setting if
/// given, else the file's contents without surrounding whitespace (files end in a newline), else
/// `None`.
pub fn inline_or_file(
    inline: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>, ReadError> {
    match (inline, file) {
        (Some(value), _) => Ok(Some(value)),
        (None, Some(path)) => Ok(Some(read_file(path)?.trim().to_string())),
        (None, None) => Ok(None),
    }
}
