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
    /// `NAME_FILE` names a file that cannot be read. The path is not quoted: a secret set
    /// in `NAME_FILE` by mistake would be.
    #[error("{name}_FILE: cannot read the file it names: {source}")]
    Unreadable {
        /// The variable's name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The gateway's variables that hold a path, read as one (a path need not be text).
const PATH_VARIABLES: [&str; 4] = [
    "PORTCULLIS_CONFIG",
    "PORTCULLIS_DATA_DIR",
    "PORTCULLIS_TLS_CERT",
    "PORTCULLIS_TLS_KEY",
];

/// The first of the gateway's own variables (`PORTCULLIS_...`) in `vars` whose value is not
/// UTF-8, but for those that hold a path. The others are read as text, and one that is not
/// would be read as unset: a PostgreSQL URL so mangled would leave each replica on a SQLite
/// store of its own, saying nothing. The commands refuse to start instead, naming the
/// variable alone.
pub fn variable_not_text(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Option<String> {
    vars.into_iter().find_map(|(name, value)| {
        let name = name.to_string_lossy();
        let read_as_text = name.starts_with("PORTCULLIS_") && !PATH_VARIABLES.contains(&&*name);
        (read_as_text && value.to_str().is_none()).then(|| name.into_owned())
    })
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
                    source,
                })?;
            let kept = text.trim_end_matches(['\r', '\n']).len();
            text.truncate(kept);
            Ok(Some(SecretString::from(text)))
        }
        (None, None) => Ok(None),
    }
}

/// The key kept in `dir/file`, at least `min_len` characters, created there (mode 0600,
/// from `generate`) when missing; `replacing` says what replacing a short one costs. Written whole to a private temporary file, then linked
/// into place: a concurrent start or a crash never leaves a partial key behind, and when
/// two processes race the second uses the first one's key.
pub fn key_from_data_dir(
    dir: &std::path::Path,
    file: &str,
    min_len: usize,
    replacing: &str,
    generate: impl FnOnce() -> SecretString,
) -> Result<SecretString, String> {
    use secrecy::ExposeSecret;
    use std::io::Write;
    let path = dir.join(file);
    let failed = |error: std::io::Error| format!("{}: {error}", path.display());
    let read = |path: &std::path::Path| -> Result<SecretString, String> {
        // Made 0600: looser, someone changed it, and whoever can read it can forge what
        // it keys (tokens' hashes, the audit chain).
        #[cfg(unix)]
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions());
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "a key file is open to others than its owner; chmod 600 it"
                );
            }
        }
        let text = std::fs::read_to_string(path).map_err(failed)?;
        let key = text.trim();
        if key.len() < min_len {
            return Err(format!(
                "{} holds fewer than {min_len} characters; remove it to generate a new one ({replacing})",
                path.display()
            ));
        }
        Ok(SecretString::from(key.to_owned()))
    };
    if path.exists() {
        return read(&path);
    }
    std::fs::create_dir_all(dir).map_err(failed)?;
    let temporary = dir.join(format!("{file}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let key = generate();
    let mut out = options.open(&temporary).map_err(failed)?;
    out.write_all(key.expose_secret().as_bytes())
        .map_err(failed)?;
    out.sync_all().map_err(failed)?;
    drop(out);
    // `hard_link` fails if another process put a key in place first: use theirs.
    let linked = std::fs::hard_link(&temporary, &path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(key),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(error) => Err(failed(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn a_variable_of_the_gateways_own_that_is_not_text_is_named() {
        let var =
            |name: &str, value: &[u8]| (OsString::from(name), OsString::from_vec(value.to_vec()));
        let mangled = b"postgres://db/\xff";
        assert_eq!(
            variable_not_text([
                var("HOME", mangled),
                var("PORTCULLIS_AUDIT", b"on"),
                var("PORTCULLIS_DATABASE_URL", mangled),
            ]),
            Some("PORTCULLIS_DATABASE_URL".to_owned())
        );
        // Others' variables are not the gateway's to judge, and a path need not be text.
        assert_eq!(
            variable_not_text([
                var("HOME", mangled),
                var("PORTCULLIS_AUDIT", b"off"),
                var("PORTCULLIS_CONFIG", b"/etc/gw-\xff.toml"),
            ]),
            None
        );
    }

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

    /// The variable is named, the file not: `S_FILE` set to the secret itself by mistake
    /// would otherwise print it.
    #[test]
    fn unreadable_file_names_the_variable_not_the_secret() {
        let secret = "sk-live-0123456789abcdef";
        let error = read_secret("S", env(&[("S_FILE", secret)])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "S_FILE: cannot read the file it names: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn debug_of_a_secret_does_not_show_it() {
        let secret = read_secret("S", env(&[("S", "hunter2")])).unwrap().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
