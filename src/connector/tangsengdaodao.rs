//! TangSengDaoDao connector.

use async_trait::async_trait;

use super::http::HttpClient;
use super::{Connector, ConnectorError, Discovery, FetchRequest, Fetched, KnownConversation};
use crate::config::{SourceConfig, TsddConfig};
use crate::model::{ConversationObservation, Platform};

pub struct TsddConnector {
    _http: HttpClient,
}

impl TsddConnector {
    pub fn new(
        _source: &SourceConfig,
        _cfg: &TsddConfig,
        http: HttpClient,
    ) -> anyhow::Result<Self> {
        Ok(TsddConnector { _http: http })
    }
}

#[async_trait]
impl Connector for TsddConnector {
    fn platform(&self) -> Platform {
        Platform::Tangsengdaodao
    }
    async fn login(&self) -> Result<(), ConnectorError> {
        Err(ConnectorError::Permanent("not implemented".into()))
    }
    async fn discover(&self, _known: &[KnownConversation]) -> Result<Discovery, ConnectorError> {
        Err(ConnectorError::Permanent("not implemented".into()))
    }
    fn feeds(&self, _c: &ConversationObservation) -> Vec<&'static str> {
        vec![]
    }
    async fn fetch(&self, _r: FetchRequest<'_>) -> Result<Fetched, ConnectorError> {
        Err(ConnectorError::Permanent("not implemented".into()))
    }
}
