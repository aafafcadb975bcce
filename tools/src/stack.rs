//! The coordinates of a running stack, as `make up` writes them to `.local/stack.env`.
//! Environment variables of the same names take precedence.

use std::{collections::HashMap, path::PathBuf};

/// Finds the repository's `.local/stack.env` from the current directory upwards.
fn stack_env_file() -> Option<PathBuf> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let candidate = dir.join(".local/stack.env");
        if candidate.is_file() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// `KEY=value` lines of the stack file, overridden by the environment.
#[derive(Debug, Clone)]
pub struct Stack(HashMap<String, String>);

impl Stack {
    pub fn load() -> Self {
        let mut vars = HashMap::new();
        if let Some(text) = stack_env_file().and_then(|p| std::fs::read_to_string(p).ok()) {
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    vars.insert(k.trim().to_owned(), v.trim().to_owned());
                }
            }
        }
        for (k, v) in std::env::vars() {
            vars.insert(k, v);
        }
        Self(vars)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A required variable; the message says how to get it.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key).ok_or_else(|| {
            format!("{key} is not set and .local/stack.env has none: run `make up` first")
        })
    }
}
