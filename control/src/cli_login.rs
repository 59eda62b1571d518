//! `s2uc login`, `s2uc logout`, and which token a command sends.
//!
//! `login` runs the OAuth2 authorization-code flow with PKCE
//! ([`crate::client::login`]): it prints the authorize URL (and opens a
//! browser when there is a display), reads the code the sign-in page shows,
//! exchanges it and stores the access and refresh tokens for the scope.
//! `login --token T` / `--token-stdin` keep storing a token pasted by hand.
//! `logout` revokes every stored login at its server and deletes them and
//! the pasted token file.
//!
//! A command sends, in this order: `--token`, `$S2UC_TOKEN`, the pasted
//! token file, then the login for `--scope` (without `--scope`: the login
//! for SciStream's scope, else the only login on file), refreshed first when
//! its access token has expired.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};

use clap::Args;
use zeroize::Zeroizing;

use crate::client::login::{
    GLOBUS_AUTH_SERVER, Login, LoginFlow, OAuthSettings, SCISTREAM_CLIENT_ID, SCISTREAM_SCOPE,
    http_client, unix_now,
};
use crate::client::{
    ClientError, LoginStore, default_login_store, default_token_file, resolve_token,
    validate_token, write_token_file,
};

/// Where the token comes from.
#[derive(Args, Clone, Debug, Default)]
pub struct TokenOpts {
    /// Bearer token (else $S2UC_TOKEN, else the token file).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Token file (mode 0600), written by `s2uc login`.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// OAuth2 scope: the one `s2uc login` asks for, and whose login the
    /// other commands send (default: SciStream's Globus scope, else the only
    /// login on file).
    #[arg(long, global = true)]
    pub scope: Option<String>,
    /// CA certificates (PEM) to trust for the authorization server besides
    /// the web PKI (a facility's own server).
    #[arg(long, global = true, env = "S2UC_AUTH_CA", value_name = "FILE")]
    pub auth_ca: Option<PathBuf>,
}

/// Options of `s2uc login`.
#[derive(Args, Clone, Debug)]
pub struct LoginOpts {
    /// The OAuth2 authorization server (Globus Auth's endpoint layout under
    /// /v2/oauth2/ and /v2/web/auth-code).
    #[arg(long, env = "S2UC_AUTH_SERVER", default_value = GLOBUS_AUTH_SERVER)]
    pub auth_server: String,
    /// The native app's client id (default: SciStream's public client).
    #[arg(long, env = "S2UC_CLIENT_ID", default_value = SCISTREAM_CLIENT_ID)]
    pub client_id: String,
    /// Print the URL only; do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// Store a token pasted on standard input instead of signing in
    /// (as `--token TOKEN` does).
    #[arg(long)]
    pub token_stdin: bool,
}

/// The login store in use.
fn store_path() -> PathBuf {
    default_login_store()
}

/// The scope a command's login is for.
fn scope_of(t: &TokenOpts) -> String {
    t.scope.clone().unwrap_or_else(|| SCISTREAM_SCOPE.into())
}

/// The token a command sends (see the module's doc for the order), or None.
pub async fn token_of(t: &TokenOpts) -> Result<Option<Zeroizing<String>>, ClientError> {
    let file = t.token_file.clone().unwrap_or_else(default_token_file);
    let env = std::env::var("S2UC_TOKEN").ok();
    if let Some((token, _)) = resolve_token(t.token.as_deref(), env.as_deref(), &file)? {
        return Ok(Some(token));
    }
    Ok(current_login(t)
        .await?
        .map(|login| Zeroizing::new(login.access_token.clone())))
}

/// The login for this command's scope, refreshed (and stored again) when
/// its access token has expired. None when there is no such login.
pub async fn current_login(t: &TokenOpts) -> Result<Option<Login>, ClientError> {
    let path = store_path();
    let mut store = LoginStore::load(&path)?;
    let chosen = match &t.scope {
        Some(scope) => store.logins.get(scope),
        None => store
            .logins
            .get(SCISTREAM_SCOPE)
            .or_else(|| match store.logins.len() {
                1 => store.logins.values().next(),
                _ => None,
            }),
    };
    let Some(login) = chosen.cloned() else {
        return Ok(None);
    };
    if !login.needs_refresh(unix_now()) {
        return Ok(Some(login));
    }
    let http = http_client(t.auth_ca.as_deref())?;
    let fresh = login.refresh(&http).await?;
    store
        .logins
        .insert(fresh.settings.scope.clone(), fresh.clone());
    store.save(&path)?;
    tracing::info!(scope = %fresh.settings.scope, "access token refreshed");
    Ok(Some(fresh))
}

/// `s2uc login`.
pub async fn login(t: &TokenOpts, opts: &LoginOpts) -> Result<(), ClientError> {
    let file = t.token_file.clone().unwrap_or_else(default_token_file);
    if t.token.is_some() || opts.token_stdin {
        return store_pasted_token(t, &file);
    }
    let settings = OAuthSettings {
        auth_server: opts.auth_server.clone(),
        client_id: opts.client_id.clone(),
        scope: scope_of(t),
    };
    let http = http_client(t.auth_ca.as_deref())?;
    let flow = LoginFlow::start(&settings)?;
    let prompt = format!("Please sign in at {} here", settings.auth_server);
    println!(
        "{prompt}:\n{0}\n{1}\n{0}",
        "-".repeat(prompt.len()),
        flow.url
    );
    if !opts.no_browser {
        open_browser(flow.url.as_str());
    }
    if std::io::stdin().is_terminal() {
        eprint!("Enter the resulting authorization code (or the page's URL) here: ");
    }
    let mut pasted = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut pasted)
        .map_err(|e| ClientError::Io {
            context: "reading the authorization code from standard input".into(),
            source: e,
        })?;
    let login = flow.finish(&pasted, &http).await?;
    let path = store_path();
    let mut store = LoginStore::load(&path)?;
    store.logins.insert(settings.scope.clone(), login.clone());
    store.save(&path)?;
    println!(
        "logged in for scope {}: tokens stored in {} (mode 0600); {}",
        settings.scope,
        path.display(),
        expiry_text(&login, unix_now())
    );
    if file.exists() {
        // The pasted token would be sent before this login.
        remove_file(&file)?;
        println!("removed the pasted token file {}", file.display());
    }
    Ok(())
}

/// `s2uc login --token T` / `--token-stdin`: the token pasted by hand.
fn store_pasted_token(t: &TokenOpts, file: &Path) -> Result<(), ClientError> {
    let token = match &t.token {
        Some(tok) => Zeroizing::new(tok.clone()),
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("paste the token and press Enter:");
            }
            let mut s = Zeroizing::new(String::new());
            std::io::stdin()
                .read_line(&mut s)
                .map_err(|e| ClientError::Io {
                    context: "reading the token from stdin".into(),
                    source: e,
                })?;
            s
        }
    };
    validate_token(&token)?;
    write_token_file(file, &token)?;
    println!("token stored in {} (mode 0600)", file.display());
    Ok(())
}

/// `s2uc logout`: every login revoked at its server and deleted, and the
/// pasted token file deleted. The local copies go even when a server cannot
/// be reached; that is then an error naming what stays valid.
pub async fn logout(t: &TokenOpts) -> Result<(), ClientError> {
    let path = store_path();
    let store = LoginStore::load(&path)?;
    let http = http_client(t.auth_ca.as_deref())?;
    let mut failures = Vec::new();
    for (scope, login) in &store.logins {
        if let Err(e) = login.revoke(&http).await {
            failures.push(format!("scope {scope}: {e}"));
        }
    }
    LoginStore::default().save(&path)?;
    let file = t.token_file.clone().unwrap_or_else(default_token_file);
    let had_file = file.exists();
    if had_file {
        remove_file(&file)?;
    }
    if !failures.is_empty() {
        return Err(ClientError::Invalid(format!(
            "the tokens are deleted here, but revoking failed, so they stay valid at the server until they expire: {}",
            failures.join("; ")
        )));
    }
    println!(
        "logged out: {} login(s) revoked and deleted{}",
        store.logins.len(),
        if had_file {
            format!("; removed the token file {}", file.display())
        } else {
            String::new()
        }
    );
    Ok(())
}

/// "the access token expires at ... (in N min); refreshable".
pub fn expiry_text(login: &Login, now: u64) -> String {
    let refresh = if login.refresh_token.is_some() {
        "it is refreshed when it expires"
    } else {
        "no refresh token: log in again when it expires"
    };
    match login.expires_at {
        Some(at) if at > now => format!(
            "the access token expires in {} min (at Unix time {at}); {refresh}",
            (at - now).div_ceil(60)
        ),
        Some(at) => format!("the access token expired (at Unix time {at}); {refresh}"),
        None => format!("the server gave no expiry; {refresh}"),
    }
}

fn remove_file(file: &Path) -> Result<(), ClientError> {
    std::fs::remove_file(file).map_err(|e| ClientError::Io {
        context: format!("removing {}", file.display()),
        source: e,
    })
}

/// Opens `url` in the desktop's browser when there is a desktop and a
/// person at the terminal; the URL is printed either way.
fn open_browser(url: &str) {
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !desktop || !std::io::stdin().is_terminal() {
        return;
    }
    let opened = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if opened.is_err() {
        eprintln!("(no browser could be opened: open the URL above yourself)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_said_plainly() {
        let login = Login {
            settings: OAuthSettings::default(),
            access_token: "a".into(),
            refresh_token: None,
            expires_at: Some(1_000 + 600),
        };
        assert_eq!(
            expiry_text(&login, 1_000),
            "the access token expires in 10 min (at Unix time 1600); no refresh token: log in again when it expires"
        );
        assert!(expiry_text(&login, 2_000).contains("expired"));
    }
}
