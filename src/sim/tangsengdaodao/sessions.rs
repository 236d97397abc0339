//! Server-side session state: login tokens and the extra-sync cursor cache.

use serde_json::json;

use super::world::{ChannelKey, World, TSDD_SYSTEM_UID};

/// A login session.
#[derive(Clone, Debug)]
pub(super) struct Session {
    pub(super) uid: String,
}

/// Why a login was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginError {
    MissingUsername,
    MissingPassword,
    UnknownUser,
    WrongPassword,
}

impl World {
    // ---- tokens and cursors --------------------------------------------------------

    /// `POST /v1/user/login`: flag 0 (APP) always issues a new token and drops the
    /// previous APP token; flags 1 and 2 reuse a still-valid token of the same flag.
    pub fn login(
        &mut self,
        username: &str,
        password: &str,
        flag: u8,
    ) -> Result<String, LoginError> {
        if username.is_empty() {
            return Err(LoginError::MissingUsername);
        }
        if password.is_empty() {
            return Err(LoginError::MissingPassword);
        }
        let user = self
            .users
            .values()
            .find(|u| u.username == username)
            .ok_or(LoginError::UnknownUser)?;
        if user.password != password {
            return Err(LoginError::WrongPassword);
        }
        let uid = user.uid.clone();
        let slot = (uid.clone(), flag);
        if let Some(token) = self.device_tokens.get(&slot) {
            if flag != 0 && self.tokens.contains_key(token) {
                return Ok(token.clone());
            }
            let old = token.clone();
            self.tokens.remove(&old);
        }
        let token = self.random_hex();
        self.tokens
            .insert(token.clone(), Session { uid: uid.clone() });
        self.device_tokens.insert(slot, token.clone());
        Ok(token)
    }

    /// What the server does after every successful login (`sentWelcomeMsg`): when
    /// `send_welcome_message_on` is set, a "login info" text from [`TSDD_SYSTEM_UID`] into
    /// the user's chat with it (red dot set), and a login-log row. The real server sends it
    /// two seconds after answering; here it lands at once.
    pub(super) fn after_login(&mut self, uid: &str, ip: &str) {
        self.logins += 1;
        if !self.welcome_message_on {
            return;
        }
        let now = self.now_us() / 1_000_000;
        let this = format!(
            "本次登录的信息：{ip} {}",
            super::render::local_time(self, now)
        );
        let content = match self.last_login.replace(this.clone()) {
            Some(last) => format!(
                "欢迎使用唐僧叨叨\n上次的登录信息：{}\n{this}",
                last.trim_start_matches("本次登录的信息：")
            ),
            None => format!("欢迎使用唐僧叨叨\n{this}"),
        };
        self.post_message(
            &ChannelKey::person(uid, TSDD_SYSTEM_UID),
            TSDD_SYSTEM_UID,
            json!({"type": 1, "content": content}),
        );
    }

    /// Successful logins so far (each one put a welcome message on the user's phone).
    pub fn login_count(&self) -> u64 {
        self.logins
    }

    /// The uid a token belongs to, if it is still valid.
    pub fn token_uid(&self, token: &str) -> Option<&str> {
        self.tokens.get(token).map(|s| s.uid.as_str())
    }

    /// Every issued token stops working (answers 401) until the next login.
    pub fn expire_tokens(&mut self) {
        self.tokens.clear();
        self.device_tokens.clear();
    }

    /// The extra-sync cursor cache (Redis hash `messageExtraVersion:<uid><source>`, field
    /// `<fakeChannelID>-<channelType>`): a cached value at or above the request wins;
    /// otherwise the request is stored. Returns the version to query from.
    pub(super) fn extra_cursor(
        &mut self,
        uid: &str,
        source: &str,
        key: &ChannelKey,
        requested: i64,
    ) -> i64 {
        let slot = (
            format!("{uid}{source}"),
            format!("{}-{}", key.fake_id, key.channel_type),
        );
        let cached = self.extra_cursors.get(&slot).copied().unwrap_or(0);
        if cached >= requested {
            return cached;
        }
        self.extra_cursors.insert(slot, requested);
        requested
    }
}
