//! Globus-compatible login of `s2uc`: the OAuth2 authorization-code flow
//! with PKCE for a native application (RFC 6749, 7636, 8252), as
//! SciStream's own client runs it against Globus Auth, and the tokens it
//! yields.
//!
//! - [`OAuthSettings`]: which authorization server, client id and scope.
//!   Globus Auth with SciStream's public native-app client id and scope by
//!   default, so an existing SciStream deployment works unchanged; a
//!   facility's own server is one `--auth-server` away.
//! - [`LoginFlow`]: the authorize URL (PKCE S256 challenge, random state,
//!   refresh tokens asked for) and the exchange of the code the user pastes
//!   back (or the whole redirect URL, whose state is then checked).
//! - [`Login`]: what one login holds (access and refresh tokens, expiry),
//!   refreshed when the access token expires and revoked by `logout`; the
//!   store of logins, one per scope, is `login_store`.
//!
//! The HTTP client follows no redirects, speaks only HTTPS, times out, and
//! trusts the web PKI plus, for a facility's own authorization server, the
//! CA certificates of `--auth-ca`. No token is ever logged or printed; the
//! errors carry the server's error code and description, never a token.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth2::basic::{BasicClient, BasicErrorResponse, BasicRevocationErrorResponse};
use oauth2::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError,
    RevocationUrl, Scope, StandardRevocableToken, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::ClientError;

/// Globus Auth, SciStream's authorization server.
pub const GLOBUS_AUTH_SERVER: &str = "https://auth.globus.org";
/// SciStream's public native-app client id at Globus Auth (its `s2uc`).
pub const SCISTREAM_CLIENT_ID: &str = "4787c84e-9c55-4881-b941-cb6720cea11c";
/// The scope SciStream's `s2uc login` asks for by default (its control
/// servers' resource server, scope suffix `scistream`).
pub const SCISTREAM_SCOPE: &str =
    "https://auth.globus.org/scopes/c42c0dac-0a52-408e-a04f-5d31bfe0aef8/scistream";

/// An access token this close to its expiry is refreshed before use.
const REFRESH_MARGIN_SECS: u64 = 60;
/// Bound on each call to the authorization server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom to log in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthSettings {
    /// Base URL of the authorization server (Globus Auth's endpoint layout:
    /// `/v2/oauth2/authorize`, `/v2/oauth2/token`, `/v2/oauth2/token/revoke`,
    /// and the page that shows the code, `/v2/web/auth-code`).
    pub auth_server: String,
    /// The native app's (public) client id.
    pub client_id: String,
    /// The scope the control servers require.
    pub scope: String,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings {
            auth_server: GLOBUS_AUTH_SERVER.into(),
            client_id: SCISTREAM_CLIENT_ID.into(),
            scope: SCISTREAM_SCOPE.into(),
        }
    }
}

impl OAuthSettings {
    /// `path` on the authorization server; the server must be https.
    fn endpoint(&self, path: &str) -> Result<oauth2::url::Url, ClientError> {
        let base = oauth2::url::Url::parse(&self.auth_server).map_err(|e| {
            ClientError::Invalid(format!(
                "--auth-server {:?} is not a URL: {e}",
                self.auth_server
            ))
        })?;
        if base.scheme() != "https" {
            return Err(ClientError::Invalid(format!(
                "--auth-server {:?} must be an https:// URL: tokens never travel in clear",
                self.auth_server
            )));
        }
        let joined = format!("{}{path}", base.as_str().trim_end_matches('/'));
        oauth2::url::Url::parse(&joined)
            .map_err(|e| ClientError::Invalid(format!("bad endpoint URL {joined:?}: {e}")))
    }

    fn check(&self) -> Result<(), ClientError> {
        for (name, value) in [("--client-id", &self.client_id), ("--scope", &self.scope)] {
            if value.trim().is_empty() || value.chars().any(|c| c.is_control()) {
                return Err(ClientError::Invalid(format!(
                    "{name} {value:?} is empty or has control characters"
                )));
            }
        }
        Ok(())
    }

    /// The oauth2 client for this server: a public client, its id in the
    /// request body, as a native app's is.
    fn client(&self) -> Result<NativeClient, ClientError> {
        self.check()?;
        Ok(BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri(AuthUrl::from_url(self.endpoint("/v2/oauth2/authorize")?))
            .set_token_uri(TokenUrl::from_url(self.endpoint("/v2/oauth2/token")?))
            .set_revocation_url(RevocationUrl::from_url(
                self.endpoint("/v2/oauth2/token/revoke")?,
            ))
            .set_redirect_uri(RedirectUrl::from_url(self.endpoint("/v2/web/auth-code")?)))
    }
}

/// A native-app client with authorize, revocation and token endpoints.
type NativeClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointSet, EndpointSet>;

/// The HTTP client for the authorization server: HTTPS only, no redirects
/// (a token request is never sent on), bounded, and trusting `ca_file`'s
/// certificates besides the web PKI.
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HTTP_TIMEOUT);
    if let Some(path) = ca_file {
        let certs = crate::auth::read_ca_file(path, "--auth-ca").map_err(ClientError::Invalid)?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| ClientError::Invalid(format!("cannot build the HTTPS client: {e}")))
}

/// What one login holds. Debug output shows no token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Login {
    /// Where it was obtained (and is refreshed and revoked).
    pub settings: OAuthSettings,
    /// The bearer token for the control servers.
    pub access_token: String,
    /// Present when the server granted one (Globus does for native apps).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Unix seconds when the access token expires, if the server said.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("settings", &self.settings)
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Login {
    /// True when the access token has expired or is about to.
    pub fn needs_refresh(&self, now: u64) -> bool {
        self.expires_at
            .is_some_and(|at| at <= now.saturating_add(REFRESH_MARGIN_SECS))
    }

    /// Asks for a new access token with the refresh token. The server may
    /// rotate the refresh token too; the old one is kept if it does not.
    pub async fn refresh(&self, http: &reqwest::Client) -> Result<Login, ClientError> {
        let Some(refresh) = &self.refresh_token else {
            return Err(ClientError::Invalid(format!(
                "the login for scope {} has expired and holds no refresh token: run s2uc login again",
                self.settings.scope
            )));
        };
        let answer = self
            .settings
            .client()?
            .exchange_refresh_token(&RefreshToken::new(refresh.clone()))
            .request_async(http)
            .await
            .map_err(|e| token_error("refreshing the login", &self.settings, e))?;
        let mut next = Login::from_answer(self.settings.clone(), &answer);
        if next.refresh_token.is_none() {
            next.refresh_token = self.refresh_token.clone();
        }
        Ok(next)
    }

    /// Revokes the access and the refresh token (RFC 7009). Both are tried;
    /// the first failure is returned.
    pub async fn revoke(&self, http: &reqwest::Client) -> Result<(), ClientError> {
        let client = self.settings.client()?;
        let mut tokens = vec![StandardRevocableToken::AccessToken(AccessToken::new(
            self.access_token.clone(),
        ))];
        if let Some(refresh) = &self.refresh_token {
            tokens.push(StandardRevocableToken::RefreshToken(RefreshToken::new(
                refresh.clone(),
            )));
        }
        let mut first_failure = None;
        for token in tokens {
            let outcome = match client.revoke_token(token) {
                Ok(request) => request
                    .request_async(http)
                    .await
                    .map_err(|e| revoke_error(&self.settings, e)),
                Err(e) => Err(ClientError::Invalid(format!("cannot revoke: {e}"))),
            };
            if let Err(e) = outcome {
                first_failure.get_or_insert(e);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    fn from_answer(settings: OAuthSettings, answer: &oauth2::basic::BasicTokenResponse) -> Login {
        Login {
            settings,
            access_token: answer.access_token().secret().clone(),
            refresh_token: answer.refresh_token().map(|r| r.secret().clone()),
            expires_at: answer.expires_in().map(|d| unix_now() + d.as_secs()),
        }
    }
}

/// One login under way: the URL the user opens, and what the exchange of
/// the code needs.
pub struct LoginFlow {
    settings: OAuthSettings,
    verifier: PkceCodeVerifier,
    state: CsrfToken,
    /// The authorize URL to open in a browser.
    pub url: oauth2::url::Url,
}

impl LoginFlow {
    /// Starts a login: a fresh PKCE verifier and state (from the operating
    /// system's CSPRNG), the authorize URL with the scope, refresh tokens
    /// asked for (`access_type=offline`) and a fresh sign-in
    /// (`prompt=login`), as SciStream's client asks Globus.
    pub fn start(settings: &OAuthSettings) -> Result<LoginFlow, ClientError> {
        let client = settings.client()?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scope(Scope::new(settings.scope.clone()))
            .set_pkce_challenge(challenge)
            .add_extra_param("access_type", "offline")
            .add_extra_param("prompt", "login")
            .url();
        Ok(LoginFlow {
            settings: settings.clone(),
            verifier,
            state,
            url,
        })
    }

    /// Exchanges what the user pasted: the code alone, or the whole URL the
    /// server redirected to (its `state` must then be this login's).
    pub async fn finish(self, pasted: &str, http: &reqwest::Client) -> Result<Login, ClientError> {
        let code = self.code_from(pasted)?;
        let answer = self
            .settings
            .client()?
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(self.verifier)
            .request_async(http)
            .await
            .map_err(|e| token_error("exchanging the authorization code", &self.settings, e))?;
        Ok(Login::from_answer(self.settings, &answer))
    }

    fn code_from(&self, pasted: &str) -> Result<Zeroizing<String>, ClientError> {
        code_from_pasted(pasted, self.state.secret().as_bytes())
    }
}

/// The authorization code in what the user pasted after signing in: the
/// code alone, or the whole URL the server redirected to, whose `state`
/// must equal `expected_state` (compared in constant time) and which must
/// not carry an `error`. Text from the user's clipboard: every refusal says
/// what to paste instead.
pub fn code_from_pasted(
    pasted: &str,
    expected_state: &[u8],
) -> Result<Zeroizing<String>, ClientError> {
    let pasted = pasted.trim();
    if pasted.is_empty() {
        return Err(ClientError::Invalid(
            "no authorization code given: paste the code the sign-in page shows".into(),
        ));
    }
    let code = if pasted.starts_with("https://") || pasted.starts_with("http://") {
        let url = oauth2::url::Url::parse(pasted)
            .map_err(|e| ClientError::Invalid(format!("the pasted URL does not parse: {e}")))?;
        let query = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Zeroizing::new(v.into_owned()))
        };
        if let Some(error) = query("error") {
            return Err(ClientError::Invalid(format!(
                "the authorization server refused the sign-in: {}",
                error.as_str()
            )));
        }
        let state = query("state").map(|s| s.to_string()).unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            state.as_bytes(),
            expected_state,
        )) {
            return Err(ClientError::Invalid(
                "the pasted URL belongs to another sign-in (its state differs): paste the URL of this login's page".into(),
            ));
        }
        let code = query("code").ok_or_else(|| {
            ClientError::Invalid("the pasted URL holds no code= parameter".into())
        })?;
        if code.is_empty() {
            return Err(ClientError::Invalid(
                "the pasted URL's code= parameter is empty: paste the URL of this login's page"
                    .into(),
            ));
        }
        code
    } else {
        Zeroizing::new(pasted.to_owned())
    };
    if code.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(ClientError::Invalid(
            "the authorization code has spaces or non-ASCII characters: paste it exactly as shown"
                .into(),
        ));
    }
    Ok(code)
}

/// A failed token request as one readable error: the server's OAuth error
/// code and description, or the transport's causes.
fn token_error<RE: std::error::Error + 'static>(
    doing: &str,
    settings: &OAuthSettings,
    e: RequestTokenError<RE, BasicErrorResponse>,
) -> ClientError {
    let reason = match &e {
        RequestTokenError::ServerResponse(answer) => {
            let mut text = answer.error().to_string();
            if let Some(d) = answer.error_description() {
                text = format!("{text} ({d})");
            }
            format!("the server refused: {text}")
        }
        other => describe(other),
    };
    ClientError::Invalid(format!("{doing} at {}: {reason}", settings.auth_server))
}

fn revoke_error<RE: std::error::Error + 'static>(
    settings: &OAuthSettings,
    e: RequestTokenError<RE, BasicRevocationErrorResponse>,
) -> ClientError {
    let reason = match &e {
        RequestTokenError::ServerResponse(answer) => {
            format!("the server refused: {answer}")
        }
        other => describe(other),
    };
    ClientError::Invalid(format!("revoking at {}: {reason}", settings.auth_server))
}

/// An error and its causes, joined with ": ".
fn describe(e: &dyn std::error::Error) -> String {
    let chain = super::error::source_chain(e);
    if chain.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {chain}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> LoginFlow {
        LoginFlow::start(&OAuthSettings {
            auth_server: "https://auth.example.org/".into(),
            ..OAuthSettings::default()
        })
        .expect("a flow")
    }

    #[test]
    fn the_authorize_url_asks_for_pkce_scope_and_refresh() {
        let f = flow();
        assert!(
            f.url
                .as_str()
                .starts_with("https://auth.example.org/v2/oauth2/authorize?")
        );
        let q: std::collections::HashMap<String, String> =
            f.url.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], SCISTREAM_CLIENT_ID);
        assert_eq!(q["scope"], SCISTREAM_SCOPE);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["access_type"], "offline");
        assert_eq!(
            q["redirect_uri"],
            "https://auth.example.org/v2/web/auth-code"
        );
        assert!(q["code_challenge"].len() >= 43, "{q:?}");
        assert!(q["state"].len() >= 16, "{q:?}");
        // Two logins never share a challenge or a state.
        let g = flow();
        assert_ne!(f.url, g.url);
    }

    #[test]
    fn a_pasted_url_must_carry_this_logins_state() {
        let f = flow();
        let state = f.state.secret().clone();
        let good = format!("https://auth.example.org/v2/web/auth-code?code=abc123&state={state}");
        assert_eq!(f.code_from(&good).expect("code").as_str(), "abc123");
        assert_eq!(f.code_from("  abc123\n").expect("code").as_str(), "abc123");
        let empty = format!("http://localhost/cb?code=&state={}", f.state.secret());
        let e = f.code_from(&empty).expect_err("an empty code");
        assert!(e.to_string().contains("code= parameter is empty"), "{e}");
        let other = "https://auth.example.org/v2/web/auth-code?code=abc123&state=someone-else";
        let e = f.code_from(other).expect_err("another login's URL");
        assert!(e.to_string().contains("state differs"), "{e}");
        let denied = format!("https://auth.example.org/cb?error=access_denied&state={state}");
        let e = f.code_from(&denied).expect_err("refused sign-in");
        assert!(e.to_string().contains("access_denied"), "{e}");
        for bad in ["", "two words"] {
            assert!(f.code_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_https_authorization_servers() {
        let e = LoginFlow::start(&OAuthSettings {
            auth_server: "http://auth.example.org".into(),
            ..OAuthSettings::default()
        })
        .err()
        .expect("http refused");
        assert!(e.to_string().contains("https://"), "{e}");
        let e = LoginFlow::start(&OAuthSettings {
            scope: " ".into(),
            ..OAuthSettings::default()
        })
        .err()
        .expect("empty scope refused");
        assert!(e.to_string().contains("--scope"), "{e}");
    }

    #[test]
    fn expiry_and_redaction() {
        let login = Login {
            settings: OAuthSettings::default(),
            access_token: "AT-secret-1".into(),
            refresh_token: Some("RT-secret-2".into()),
            expires_at: Some(1_000),
        };
        assert!(login.needs_refresh(1_000 - REFRESH_MARGIN_SECS));
        assert!(!login.needs_refresh(1_000 - REFRESH_MARGIN_SECS - 1));
        let shown = format!("{login:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
