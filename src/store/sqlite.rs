//! Embedded SQLite store (placeholder until the adapter lands).
use std::path::Path;
use std::sync::Arc;

use super::StoreError;
use crate::metrics::Metrics;

pub struct SqliteStore;

impl SqliteStore {
    pub fn open(_path: &Path, _metrics: Arc<Metrics>) -> Result<SqliteStore, StoreError> {
        Err(StoreError::Schema(
            "the sqlite store is not built yet".into(),
        ))
    }
}
use super::{Recorded, Store};
use crate::domain::{ApiKey, Conversion, CreditRow, Goal, Site, Touchpoint};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;
#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        todo!()
    }
    async fn check(&self) -> Result<(), StoreError> {
        todo!()
    }
    fn name(&self) -> &'static str {
        "sqlite"
    }
    async fn create_site(&self, _site: &Site) -> Result<(), StoreError> {
        todo!()
    }
    async fn site(&self, _key: &str) -> Result<Option<Site>, StoreError> {
        todo!()
    }
    async fn add_api_key(&self, _key: &ApiKey) -> Result<(), StoreError> {
        todo!()
    }
    async fn site_for_key_hash(&self, _hash: &str) -> Result<Option<String>, StoreError> {
        todo!()
    }
    async fn revoke_api_keys(&self, _prefix: &str) -> Result<u64, StoreError> {
        todo!()
    }
    async fn goals(&self, _site: &str) -> Result<Vec<Goal>, StoreError> {
        todo!()
    }
    async fn goal(&self, _site: &str, _id: Uuid) -> Result<Option<Goal>, StoreError> {
        todo!()
    }
    async fn put_goal(&self, _goal: &Goal) -> Result<(), StoreError> {
        todo!()
    }
    async fn delete_goal(&self, _site: &str, _id: Uuid) -> Result<bool, StoreError> {
        todo!()
    }
    async fn put_touchpoint(&self, _tp: &Touchpoint) -> Result<(), StoreError> {
        todo!()
    }
    async fn touchpoints(
        &self,
        _site: &str,
        _vid: &str,
        _since: DateTime<Utc>,
    ) -> Result<Vec<Touchpoint>, StoreError> {
        todo!()
    }
    async fn record_conversion(&self, _c: &Conversion, _o: bool) -> Result<Recorded, StoreError> {
        todo!()
    }
    async fn credit_rows(
        &self,
        _site: &str,
        _from: NaiveDate,
        _to: NaiveDate,
        _goal: Option<Uuid>,
    ) -> Result<Vec<CreditRow>, StoreError> {
        todo!()
    }
    async fn conversions_for_hit(
        &self,
        _site: &str,
        _hit: Uuid,
    ) -> Result<Vec<Conversion>, StoreError> {
        todo!()
    }
}
