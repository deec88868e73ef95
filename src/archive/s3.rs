//! S3 archive: objects in a bucket under `S3_PREFIX`, on AWS S3 or any
//! S3-compatible store (MinIO, Ceph, moto) when `S3_ENDPOINT` is set.
//!
//! A `put` returns only once S3 answered the upload (one `PutObject`, or a
//! completed multipart upload above [`S3Options::multipart_threshold`]), so
//! the object is durable when the archiver acks its hits. Putting the same
//! key again replaces the object; keys come from
//! [`format`](super::format) and are a pure function of the hits.
//!
//! Credentials and region come from the standard AWS chain (environment,
//! profile, web identity, instance metadata). Checksums are sent only when
//! an operation requires them, because several S3-compatible servers
//! reject the SDK's default trailing checksums.
//!
//! This adapter never reads or writes outside its prefix, never deletes
//! objects, and never decides when to retry a batch: transient failures
//! are retried a few times by the SDK, then surface as
//! [`ArchiveError::Unavailable`] for the archiver's own backoff.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tracing::{debug, info, warn};

use super::{Archive, ArchiveError};
use crate::config::S3Settings;
use crate::metrics::Metrics;

/// S3 refuses parts smaller than this (except the last one).
const MIN_PART_SIZE: usize = 5 << 20;

/// Tuning of the S3 client; [`S3Options::default`] suits production.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Bodies larger than this are uploaded in parts.
    pub multipart_threshold: usize,
    /// Size of each part (raised to S3's 5 MiB minimum).
    pub part_size: usize,
    /// Parts uploaded at once.
    pub part_concurrency: usize,
    /// Attempts per request, the first included (SDK standard retry mode).
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    /// Bound on one attempt of one request (a part upload included).
    pub attempt_timeout: Duration,
    /// Bound on one request with all its retries.
    pub operation_timeout: Duration,
    /// Bound on the readiness probe, which is never retried: `/ready`
    /// must answer promptly while S3 is down.
    pub check_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            multipart_threshold: 8 << 20,
            part_size: 8 << 20,
            part_concurrency: 4,
            max_attempts: 3,
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(180),
            check_timeout: Duration::from_millis(1500),
        }
    }
}

pub struct S3Archive {
    client: Client,
    bucket: String,
    /// Empty or ending in `/`.
    prefix: String,
    options: S3Options,
    metrics: Arc<Metrics>,
}

fn unavailable(what: String, error: impl std::error::Error) -> ArchiveError {
    ArchiveError::Unavailable(format!("{what}: {}", DisplayErrorContext(error)))
}

impl S3Archive {
    /// Builds a client from the standard AWS chain and `settings`, with
    /// default [`S3Options`]. Makes no request (see [`S3Archive::check`]).
    pub async fn new(
        settings: &S3Settings,
        metrics: Arc<Metrics>,
    ) -> Result<S3Archive, ArchiveError> {
        Self::with_options(settings, metrics, S3Options::default()).await
    }

    pub async fn with_options(
        settings: &S3Settings,
        metrics: Arc<Metrics>,
        mut options: S3Options,
    ) -> Result<S3Archive, ArchiveError> {
        if settings.bucket.trim().is_empty() {
            return Err(ArchiveError::Unavailable("S3_BUCKET is empty".into()));
        }
        options.part_size = options.part_size.max(MIN_PART_SIZE);
        options.part_concurrency = options.part_concurrency.max(1);
        // S3-compatible servers rarely care about the region, but the
        // signer needs one; AWS itself gets it from the usual chain.
        let region = RegionProviderChain::first_try(settings.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::from_static("us-east-1"));
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(options.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .operation_attempt_timeout(options.attempt_timeout)
                    .operation_timeout(options.operation_timeout)
                    .build(),
            )
            .load()
            .await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &settings.endpoint {
            // Compatible stores serve buckets as paths, not subdomains.
            config = config.endpoint_url(endpoint).force_path_style(true);
        }
        let client = Client::from_conf(config.build());
        info!(
            bucket = %settings.bucket,
            prefix = %settings.prefix,
            endpoint = settings.endpoint.as_deref().unwrap_or("aws"),
            "S3 archive configured."
        );
        Ok(S3Archive {
            client,
            bucket: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
            options,
            metrics,
        })
    }

    /// The SDK client, for tools and tests that read the bucket directly.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket unless it exists (`tally migrate`). Returns
    /// whether it was created.
    pub async fn ensure_bucket(&self) -> Result<bool, ArchiveError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(false);
        }
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        // us-east-1 is the one region that must not be named.
        if let Some(region) = self.client.config().region() {
            if region.as_ref() != "us-east-1" {
                create = create.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(region.as_ref()))
                        .build(),
                );
            }
        }
        match create.send().await {
            Ok(_) => {
                info!(bucket = %self.bucket, "Bucket created.");
                Ok(true)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
            {
                Ok(false)
            }
            Err(e) => Err(unavailable(format!("create bucket {}", self.bucket), e)),
        }
    }

    fn full_key(&self, key: &str) -> Result<String, ArchiveError> {
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|s| s == "..") {
            return Err(ArchiveError::Corrupt(format!(
                "invalid archive key `{key}`"
            )));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    fn count_error(&self) {
        self.metrics.adapter_errors.with_label_values(&["s3"]).inc();
    }

    async fn put_multipart(&self, key: &str, body: Bytes) -> Result<(), ArchiveError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/gzip")
            .send()
            .await
            .map_err(|e| unavailable(format!("start multipart upload of {key}"), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| ArchiveError::Unavailable(format!("no upload id for {key}")))?
            .to_owned();
        let parts: Vec<(i32, Bytes)> = (0..body.len())
            .step_by(self.options.part_size)
            .zip(1..)
            .map(|(at, n)| {
                (
                    n,
                    body.slice(at..(at + self.options.part_size).min(body.len())),
                )
            })
            .collect();
        let count = parts.len();
        let uploaded: Result<Vec<CompletedPart>, ArchiveError> = futures_util::stream::iter(parts)
            .map(|(n, part)| {
                let upload_id = upload_id.as_str();
                async move {
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(n)
                        .body(ByteStream::from(part))
                        .send()
                        .await
                        .map_err(|e| unavailable(format!("upload part {n} of {key}"), e))?;
                    Ok(CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .build())
                }
            })
            .buffered(self.options.part_concurrency)
            .try_collect()
            .await;
        let completed = match uploaded {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(format!("complete multipart upload of {key}"), e)),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            // Unfinished uploads are billed until aborted (or a lifecycle
            // rule reaps them); the archiver will start a fresh one.
            if let Err(error) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                self.count_error();
                warn!(error = %DisplayErrorContext(&error), key, "Could not abort a multipart upload.");
            }
        } else {
            debug!(
                key,
                parts = count,
                bytes = body.len(),
                "Multipart upload completed."
            );
        }
        completed
    }
}

#[async_trait]
impl Archive for S3Archive {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ArchiveError> {
        let key = self.full_key(key)?;
        let put = if body.len() > self.options.multipart_threshold {
            self.put_multipart(&key, body).await
        } else {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type("application/gzip")
                .body(ByteStream::from(body))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable(format!("put {key}"), e))
        };
        super::count_failure(&self.metrics, "s3", put)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        let full = format!("{}{prefix}", self.prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                self.count_error();
                unavailable(format!("list {full}"), e)
            })?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter_map(|k| k.strip_prefix(self.prefix.as_str()))
                    .filter(|k| k.ends_with(".ndjson.gz"))
                    .map(str::to_owned),
            );
        }
        keys.sort();
        Ok(keys)
    }

    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        let full = self.full_key(key)?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(ArchiveError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no object {full}"),
                )))
            }
            Err(e) => {
                self.count_error();
                return Err(unavailable(format!("get {full}"), e));
            }
        };
        let body = out.body.collect().await.map_err(|e| {
            self.count_error();
            unavailable(format!("read {full}"), e)
        })?;
        Ok(body.into_bytes())
    }

    async fn check(&self) -> Result<(), ArchiveError> {
        // One quick attempt: retries would outlast the readiness probe.
        let quick = aws_sdk_s3::config::Builder::default()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.options.check_timeout)
                    .operation_attempt_timeout(self.options.check_timeout)
                    .operation_timeout(self.options.check_timeout)
                    .build(),
            );
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .customize()
            .config_override(quick)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(format!("bucket {}", self.bucket), e))
    }

    fn name(&self) -> &'static str {
        "s3"
    }
}
