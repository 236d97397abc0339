//! Server-side session state: login tokens and the extra-sync cursor cache.

use super::world::{ChannelKey, World};

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
        self.tokens.insert(token.clone(), Session { uid });
        self.device_tokens.insert(slot, token.clone());
        Ok(token)
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
