//! Who may use the admin API, and protection against cross-site requests.
//!
//! Every route, the stream and the OpenAPI document included, passes
//! [`guard`] unless the configuration opted out explicitly
//! (`AdminConfig::insecure_no_auth`). A request is authenticated by
//! `Authorization: Bearer <token>` (the token's SHA-256 compared in constant
//! time with each configured token's) or by a session cookie from
//! `POST …/api/login`: `<payload hex>.<HMAC-SHA256 hex>` over the user, its
//! expiry and a random nonce, keyed by a server secret, verified in
//! constant time, `HttpOnly; SameSite=Strict`. Passwords are configured as
//! PBKDF2-HMAC-SHA256 hashes ([`hash_password`]): the standard password
//! hash (NIST SP 800-132, Django's default) on the SHA-256 this module
//! already uses, with a per-password salt and a stored work factor.
//!
//! State-changing requests (any method but GET, HEAD and OPTIONS) must also
//! carry the header `x-taskflow-csrf`, and an `Origin` header, when present,
//! must name the request's own host. A cross-site page cannot add a custom
//! header without a CORS preflight, which this router never grants. With a
//! session cookie the header's value must be the session's CSRF token
//! (given at login and by `GET …/api/session`; an HMAC of the session, so
//! it needs no server state).
//!
//! Logins are throttled per user name ([`LoginThrottle`]): after 5 wrong
//! passwords in a row, each further try must wait, 1 s after the fifth
//! failure and twice as long after each next, up to 5 minutes; a try too
//! early is answered 429 with `Retry-After`, without checking the
//! password. At most two password hashes are computed at once, so a flood
//! of logins cannot take the machine's cores.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::Admin;
use super::error::AdminError;

/// The header a state-changing request must carry.
pub const CSRF_HEADER: &str = "x-taskflow-csrf";
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "taskflow_admin_session";
/// The PBKDF2 work factor [`hash_password`] uses: OWASP's 2023 figure for
/// PBKDF2-HMAC-SHA256.
pub const DEFAULT_ROUNDS: u32 = 600_000;

const SCHEME: &str = "pbkdf2-sha256";

/// Who made a request: a token's or user's name, or `anonymous` without
/// auth. Handlers record it in the audit log.
#[derive(Clone, Debug)]
pub(crate) struct Actor {
    pub(crate) name: String,
    /// The CSRF token of a cookie session.
    pub(crate) csrf: Option<String>,
}

/// A password hash in the form `pbkdf2-sha256$<rounds>$<salt hex>$<hash hex>`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PasswordHash {
    rounds: u32,
    salt: Vec<u8>,
    hash: [u8; 32],
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("rounds", &self.rounds)
            .finish_non_exhaustive()
    }
}

/// A password hash that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid password hash: {0}; expected `pbkdf2-sha256$<rounds>$<salt hex>$<hash hex>` from `taskflow::admin::hash_password`"
)]
pub struct InvalidPasswordHash(&'static str);

impl std::str::FromStr for PasswordHash {
    type Err = InvalidPasswordHash;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split('$');
        if parts.next() != Some(SCHEME) {
            return Err(InvalidPasswordHash("unknown scheme"));
        }
        let rounds = parts
            .next()
            .and_then(|rounds| rounds.parse::<u32>().ok())
            .filter(|rounds| *rounds > 0)
            .ok_or(InvalidPasswordHash("bad rounds"))?;
        let salt = parts
            .next()
            .and_then(unhex)
            .filter(|salt| salt.len() >= 8)
            .ok_or(InvalidPasswordHash("bad salt"))?;
        let hash = parts
            .next()
            .and_then(unhex)
            .and_then(|hash| <[u8; 32]>::try_from(hash).ok())
            .ok_or(InvalidPasswordHash("bad hash"))?;
        if parts.next().is_some() {
            return Err(InvalidPasswordHash("trailing fields"));
        }
        Ok(PasswordHash { rounds, salt, hash })
    }
}

impl PasswordHash {
    fn verify(&self, password: &str) -> bool {
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &self.salt, self.rounds, &mut out);
        same(&out, &self.hash)
    }
}

/// Hashes `password` for [`AdminConfig::user`](super::AdminConfig::user)
/// with [`DEFAULT_ROUNDS`] and a random salt.
///
/// ```no_run
/// let hash = taskflow::admin::hash_password("correct horse").unwrap();
/// assert!(hash.starts_with("pbkdf2-sha256$600000$"));
/// ```
///
/// # Errors
///
/// When the operating system gives no random bytes for the salt.
pub fn hash_password(password: &str) -> Result<String, getrandom::Error> {
    hash_password_with_rounds(password, DEFAULT_ROUNDS)
}

/// [`hash_password`] with another work factor (`rounds` ≥ 1; fewer is
/// faster to check and to guess).
///
/// ```
/// let hash = taskflow::admin::hash_password_with_rounds("pw", 1000).unwrap();
/// assert!(hash.starts_with("pbkdf2-sha256$1000$"));
/// ```
///
/// # Errors
///
/// When the operating system gives no random bytes for the salt.
pub fn hash_password_with_rounds(password: &str, rounds: u32) -> Result<String, getrandom::Error> {
    let rounds = rounds.max(1);
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)?;
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, rounds, &mut out);
    Ok(format!("{SCHEME}${rounds}${}${}", hex(&salt), hex(&out)))
}

/// The credentials an [`AdminConfig`](super::AdminConfig) accepts.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    /// (name, SHA-256 of the token).
    pub(crate) tokens: Vec<(String, [u8; 32])>,
    pub(crate) users: Vec<(String, PasswordHash)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |names: Vec<&String>| names.into_iter().cloned().collect::<Vec<_>>();
        f.debug_struct("Credentials")
            .field(
                "tokens",
                &names(self.tokens.iter().map(|(n, _)| n).collect()),
            )
            .field("users", &names(self.users.iter().map(|(n, _)| n).collect()))
            .finish()
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal, in time independent of where they differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("hmac accepts any key length"));
    for part in parts {
        mac.update(part);
    }
    mac
}

/// A login session, as carried in its cookie.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) user: String,
    pub(crate) expires: u64,
    /// The cookie value.
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

impl Session {
    /// A new session for `user`, valid for `ttl`.
    pub(crate) fn issue(secret: &[u8], user: &str, ttl: Duration) -> Result<Self, AdminError> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)
            .map_err(|_| AdminError::Forbidden("no randomness for a session".into()))?;
        let expires = (SystemTime::now() + ttl)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let payload = format!("{}|{expires}|{}", hex(user.as_bytes()), hex(&nonce));
        let tag = mac(secret, &[b"session|", payload.as_bytes()])
            .finalize()
            .into_bytes();
        let cookie = format!("{}.{}", hex(payload.as_bytes()), hex(&tag));
        Ok(Session {
            user: user.to_owned(),
            expires,
            csrf: csrf_of(secret, &payload),
            cookie,
        })
    }

    /// The session in a cookie value, if its MAC holds and it has not
    /// expired.
    pub(crate) fn verify(secret: &[u8], cookie: &str) -> Option<Self> {
        let (payload_hex, tag_hex) = cookie.split_once('.')?;
        let payload = String::from_utf8(unhex(payload_hex)?).ok()?;
        let tag = unhex(tag_hex)?;
        mac(secret, &[b"session|", payload.as_bytes()])
            .verify_slice(&tag)
            .ok()?;
        let mut fields = payload.split('|');
        let user = String::from_utf8(unhex(fields.next()?)?).ok()?;
        let expires: u64 = fields.next()?.parse().ok()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        (now < expires).then(|| Session {
            user,
            expires,
            csrf: csrf_of(secret, &payload),
            cookie: cookie.to_owned(),
        })
    }
}

fn csrf_of(secret: &[u8], payload: &str) -> String {
    hex(&mac(secret, &[b"csrf|", payload.as_bytes()])
        .finalize()
        .into_bytes())
}

/// Checks `user`'s `password`: the user's hash, or a dummy one for an
/// unknown user, so both take as long.
pub(crate) fn check_password(credentials: &Credentials, user: &str, password: &str) -> bool {
    let known = credentials
        .users
        .iter()
        .find(|(name, _)| same(name.as_bytes(), user.as_bytes()));
    match known {
        Some((_, hash)) => hash.verify(password),
        None => {
            let rounds = credentials
                .users
                .first()
                .map_or(DEFAULT_ROUNDS, |(_, hash)| hash.rounds);
            let dummy = PasswordHash {
                rounds,
                salt: vec![0; 16],
                hash: [0; 32],
            };
            let _ = dummy.verify(password);
            false
        }
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Who the request's credentials name, if they hold.
pub(crate) fn authenticate(admin: &Admin, headers: &HeaderMap) -> Result<Actor, AdminError> {
    if admin.config.insecure {
        return Ok(Actor {
            name: "anonymous".into(),
            csrf: None,
        });
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        let digest = sha256(token.trim().as_bytes());
        // Every token is compared, so the time taken does not say which.
        let mut found = None;
        for (name, expected) in &admin.config.credentials.tokens {
            if same(&digest, expected) {
                found = Some(name.clone());
            }
        }
        return found
            .map(|name| Actor { name, csrf: None })
            .ok_or(AdminError::Unauthorized);
    }
    cookie_value(headers, SESSION_COOKIE)
        .and_then(|cookie| Session::verify(&admin.secret, cookie))
        .filter(|session| {
            admin
                .config
                .credentials
                .users
                .iter()
                .any(|(name, _)| *name == session.user)
        })
        .map(|session| Actor {
            name: session.user,
            csrf: Some(session.csrf),
        })
        .ok_or(AdminError::Unauthorized)
}

/// Refuses a state-changing request from another site: an `Origin` that is
/// neither the request's own host nor one of `allowed`, or no (or the
/// wrong) CSRF header.
pub(crate) fn check_csrf(
    request: &Request,
    allowed: &[String],
    csrf: Option<&str>,
) -> Result<(), AdminError> {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return Ok(());
    }
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let origin_host = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/');
        // HTTP/1 names the host in `Host`, HTTP/2 in the URI's authority.
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .or_else(|| {
                request
                    .uri()
                    .authority()
                    .map(|authority| authority.as_str())
            })
            .unwrap_or_default();
        let same_host = !host.is_empty() && origin_host.eq_ignore_ascii_case(host);
        let allowed = allowed
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin));
        if !same_host && !allowed {
            return Err(AdminError::Forbidden(format!(
                "cross-origin request from `{origin}` refused"
            )));
        }
    }
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty())
        .ok_or_else(|| AdminError::Forbidden(format!("missing `{CSRF_HEADER}` header")))?;
    match csrf {
        Some(expected) if !same(given.as_bytes(), expected.as_bytes()) => Err(
            AdminError::Forbidden(format!("wrong `{CSRF_HEADER}` token for this session")),
        ),
        _ => Ok(()),
    }
}

/// The middleware in front of every protected route: authenticates, checks
/// CSRF, and hands the [`Actor`] to the handler.
pub(crate) async fn guard(
    State(admin): State<Arc<Admin>>,
    mut request: Request,
    next: Next,
) -> Result<Response, AdminError> {
    let actor = authenticate(&admin, request.headers())?;
    check_csrf(&request, &admin.config.origins, actor.csrf.as_deref())?;
    request.extensions_mut().insert(actor);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_the_rfc_7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1.
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"passwd", b"salt", 1, &mut out);
        assert!(hex(&out).starts_with("55ac046e56e3089fec1691c22544b605"));
    }

    #[test]
    fn a_hash_checks_its_password_only() {
        let hash: PasswordHash = hash_password_with_rounds("secret", 10)
            .unwrap()
            .parse()
            .unwrap();
        assert!(hash.verify("secret"));
        assert!(!hash.verify("Secret"));
        assert!("pbkdf2-sha256$0$00$00".parse::<PasswordHash>().is_err());
        assert!("bcrypt$10$x".parse::<PasswordHash>().is_err());
    }

    #[test]
    fn a_session_cookie_verifies_with_its_secret_only() {
        let session = Session::issue(b"secret one", "ops", Duration::from_secs(60)).unwrap();
        let back = Session::verify(b"secret one", &session.cookie).unwrap();
        assert_eq!(
            (back.user.as_str(), back.csrf.as_str()),
            ("ops", session.csrf.as_str())
        );
        assert!(Session::verify(b"secret two", &session.cookie).is_none());
        let mut forged = session.cookie.clone();
        forged.replace_range(0..2, "00");
        assert!(Session::verify(b"secret one", &forged).is_none());
        let expired = Session::issue(b"secret one", "ops", Duration::ZERO).unwrap();
        assert!(Session::verify(b"secret one", &expired.cookie).is_none());
    }
}

/// Wrong passwords in a row a user name may have without waiting.
const FREE_FAILURES: u32 = 5;
/// The longest wait between tries.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// User names tracked at most; the stalest leave first.
const TRACKED: usize = 10_000;

/// Failed logins per user name: how many in a row, and the last one's time.
#[derive(Debug)]
pub(crate) struct LoginThrottle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// Password hashes computed at once.
    pub(crate) hashing: tokio::sync::Semaphore,
}

impl LoginThrottle {
    pub(crate) fn new() -> Self {
        LoginThrottle {
            failures: Mutex::default(),
            hashing: tokio::sync::Semaphore::new(2),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `user` must still wait before trying again, if at all.
    pub(crate) fn wait(&self, user: &str) -> Option<Duration> {
        let (count, last) = *self.lock().get(user)?;
        let wait = penalty(count)?;
        wait.checked_sub(last.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// Counts a wrong password for `user`.
    pub(crate) fn failed(&self, user: &str) {
        let mut failures = self.lock();
        if failures.len() >= TRACKED && !failures.contains_key(user) {
            // Forget those whose wait is long over, else the stalest.
            failures.retain(|_, (count, last)| {
                last.elapsed() < penalty(*count).unwrap_or_default() + MAX_WAIT
            });
            if failures.len() >= TRACKED
                && let Some(stalest) = failures
                    .iter()
                    .min_by_key(|(_, (_, last))| *last)
                    .map(|(name, _)| name.clone())
            {
                failures.remove(&stalest);
            }
        }
        let entry = failures
            .entry(user.to_owned())
            .or_insert((0, Instant::now()));
        *entry = (entry.0.saturating_add(1), Instant::now());
    }

    /// A right password: `user` starts afresh.
    pub(crate) fn succeeded(&self, user: &str) {
        self.lock().remove(user);
    }
}

/// The wait after `count` wrong passwords in a row, if any.
fn penalty(count: u32) -> Option<Duration> {
    let over = count.checked_sub(FREE_FAILURES)?;
    Some(
        Duration::from_secs(1)
            .checked_mul(1 << over.min(16))
            .unwrap_or(MAX_WAIT)
            .min(MAX_WAIT),
    )
}
