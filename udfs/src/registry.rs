//! The model registry: a folder whose subfolders are models (`model.onnx` + `model.json`),
//! each named by its folder and identified by its id (`name@` and a hash of its files).
//!
//! The API changes models by registry name or id only, never by an arbitrary path: a
//! request cannot make the service open files outside the registry.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::{ModelCard, digest_of, id_of};

/// Why a model could not be found in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "`{0}` is not a model name: use a folder name of the registry (letters, digits, `.`, `_`, `-`) or a model id `name@hash`"
    )]
    BadName(String),
    #[error("no model `{name}` in the registry {root} (it has: {available})")]
    Unknown {
        name: String,
        root: PathBuf,
        available: String,
    },
    #[error("reading the registry {root}: {source}")]
    Io {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One model folder of the registry, read without loading the model.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryEntry {
    /// The folder's name.
    pub name: String,
    /// `name@` and a hash of its files (null if they cannot be read).
    pub id: Option<String>,
    /// What the card says it is (`autoencoder`, `gradient_boosted_trees`).
    pub kind: Option<String>,
    /// Why the folder is not a usable model, if it is not.
    pub problem: Option<String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// The registry folder.
#[derive(Debug, Clone)]
pub struct ModelRegistry {
    root: PathBuf,
}

impl ModelRegistry {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every subfolder with a `model.json`, by name.
    pub fn list(&self) -> Result<Vec<RegistryEntry>, RegistryError> {
        let io = |source| RegistryError::Io {
            root: self.root.clone(),
            source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io)? {
            let dir = entry.map_err(io)?.path();
            if !dir.join("model.json").is_file() {
                continue;
            }
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            entries.push(Self::entry(name, dir));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn entry(name: String, dir: PathBuf) -> RegistryEntry {
        let card = ModelCard::read(&dir);
        let digest = digest_of(&dir.join("model.onnx"), &dir.join("model.json"));
        let problem = match (&card, &digest) {
            (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        RegistryEntry {
            id: match (&card, &digest) {
                (Ok(card), Ok(digest)) => Some(id_of(&card.name, digest)),
                _ => None,
            },
            kind: card.as_ref().ok().map(|c| c.kind.clone()),
            problem,
            name,
            dir,
        }
    }

    /// The folder of the model named `name` (a folder name) or with id `name` (`x@hash`).
    pub fn resolve(&self, name: &str) -> Result<PathBuf, RegistryError> {
        let plain = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        let folder = name.split_once('@').map_or(name, |(folder, _)| folder);
        let hash_ok = name.split_once('@').is_none_or(|(_, hash)| {
            !hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !plain(folder) || !hash_ok {
            return Err(RegistryError::BadName(name.to_string()));
        }
        let entries = self.list()?;
        let found = entries.iter().find(|e| {
            if name.contains('@') {
                e.id.as_deref() == Some(name)
            } else {
                e.name == name
            }
        });
        match found {
            Some(entry) => Ok(entry.dir.clone()),
            None => Err(RegistryError::Unknown {
                name: name.to_string(),
                root: self.root.clone(),
                available: if entries.is_empty() {
                    "no models".to_string()
                } else {
                    entries
                        .iter()
                        .map(|e| match &e.id {
                            Some(id) => format!("{} ({id})", e.name),
                            None => e.name.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        }
    }
}
