//! Secrets from the environment: `NAME` holds the value, or `NAME_FILE` names a file that
//! does (as Docker and Kubernetes mount secrets).

use std::path::PathBuf;

use secrecy::SecretString;

/// Why a secret could not be read. No variant carries the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Both `NAME` and `NAME_FILE` are set, so which one wins would be a guess.
    #[error("both {name} and {name}_FILE are set; set only one")]
    Ambiguous {
        /// The variable's name.
        name: String,
    },
    /// `NAME_FILE` names a file that cannot be read.
    #[error("{name}_FILE: cannot read {path}: {source}")]
    Unreadable {
        /// The variable's name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The secret in `name` or in the file `name_FILE` names, with trailing line breaks
/// removed; `None` when neither is set.
pub fn read_secret(
    name: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<SecretString>, SecretError> {
    let file_var = format!("{name}_FILE");
    match (env(name), env(&file_var)) {
        (Some(_), Some(_)) => Err(SecretError::Ambiguous {
            name: name.to_owned(),
        }),
        (Some(value), None) => Ok(Some(SecretString::from(value))),
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            let mut text =
                std::fs::read_to_string(&path).map_err(|source| SecretError::Unreadable {
                    name: name.to_owned(),
                    path: path.clone(),
                    source,
                })?;
            let kept = text.trim_end_matches(['\r', '\n']).len();
            text.truncate(kept);
            Ok(Some(SecretString::from(text)))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn reads_the_variable() {
        let secret = read_secret("S", env(&[("S", "value")])).unwrap().unwrap();
        assert_eq!(secret.expose_secret(), "value");
    }

    #[test]
    fn reads_the_file_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "from-file\n").unwrap();
        let secret = read_secret("S", env(&[("S_FILE", path.to_str().unwrap())]))
            .unwrap()
            .unwrap();
        assert_eq!(secret.expose_secret(), "from-file");
    }

    #[test]
    fn both_set_is_an_error_and_neither_is_none() {
        assert!(matches!(
            read_secret("S", env(&[("S", "a"), ("S_FILE", "/x")])),
            Err(SecretError::Ambiguous { .. })
        ));
        assert!(read_secret("S", env(&[])).unwrap().is_none());
    }

    #[test]
    fn unreadable_file_names_the_variable_not_the_secret() {
        let error = read_secret("S", env(&[("S_FILE", "/nonexistent/portcullis")])).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("S_FILE: cannot read /nonexistent/portcullis")
        );
    }

    #[test]
    fn debug_of_a_secret_does_not_show_it() {
        let secret = read_secret("S", env(&[("S", "hunter2")])).unwrap().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
