//! The token store of `s2uc`: where a token comes from (flag, environment,
//! the 0600 token file), its validation and writing the file.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::ClientError;

/// Default token file: `$HOME/.scistream/s2uc-token`.
pub fn default_token_file() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".scistream").join("s2uc-token")
}

/// Where a token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token`
    Flag,
    /// `S2UC_TOKEN`
    Env,
    /// the token file
    File,
}

/// Picks the token: flag, then environment, then the token file (which must
/// be mode 0600). None when there is none at all.
pub fn resolve_token(
    flag: Option<&str>,
    env: Option<&str>,
    file: &Path,
) -> Result<Option<(Zeroizing<String>, TokenSource)>, ClientError> {
    if let Some(t) = flag.filter(|t| !t.is_empty()) {
        return Ok(Some((Zeroizing::new(t.to_owned()), TokenSource::Flag)));
    }
    if let Some(t) = env.filter(|t| !t.is_empty()) {
        return Ok(Some((Zeroizing::new(t.to_owned()), TokenSource::Env)));
    }
    if !file.exists() {
        return Ok(None);
    }
    crate::auth::check_private_file(file, "token file")
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
    let t = Zeroizing::new(
        std::fs::read_to_string(file)
            .map_err(|e| ClientError::Io {
                context: format!("reading token file {}", file.display()),
                source: e,
            })?
            .trim()
            .to_owned(),
    );
    Ok((!t.is_empty()).then_some((t, TokenSource::File)))
}

/// Checks a token before it is stored: not empty, and printable ASCII
/// without spaces (it travels in the `authorization` metadata as
/// "Bearer TOKEN"). Surrounding whitespace (a pasted newline) is ignored.
/// The error never contains the token.
pub fn validate_token(token: &str) -> Result<(), ClientError> {
    let t = token.trim();
    if t.is_empty() {
        return Err(ClientError::Invalid(
            "empty token: pass --token TOKEN, or the token on standard input".into(),
        ));
    }
    if t.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
    {
        return Err(ClientError::Invalid(
            "the token starts with \"Bearer \": store the token alone, without that prefix".into(),
        ));
    }
    if let Some((i, _)) = t.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
        return Err(ClientError::Invalid(format!(
            "the token has a space, control or non-ASCII character at byte {}: a bearer token is printable ASCII without spaces (is it the right text?)",
            i + 1
        )));
    }
    Ok(())
}

/// Writes the token file with mode 0600 (directory 0700), atomically.
pub fn write_token_file(file: &Path, token: &str) -> Result<(), ClientError> {
    write_private_file(file, token.trim().as_bytes())
}

/// Writes `bytes` to `file` with mode 0600 (its directory 0700) through a
/// temporary file and a rename, so a reader sees the old or the new whole.
pub fn write_private_file(file: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |context: String| move |e| ClientError::Io { context, source: e };
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("creating {}", dir.display())))?;
    }
    let tmp = file.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, file).map_err(io(format!("renaming to {}", file.display())))?;
    Ok(())
}
