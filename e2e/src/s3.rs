//! Reads a job's committed output from the in-cluster MinIO (reached through the NodePort the
//! kind config maps to the host) and turns it into a [`sequence::Report`].

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::DisplayErrorContext;

use crate::sequence::{self, Record, Report};
use crate::{Error, Result};

/// An S3 location `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Uri {
    pub bucket: String,
    /// Without a trailing slash.
    pub prefix: String,
}

impl S3Uri {
    pub fn parse(uri: &str) -> Option<S3Uri> {
        let rest = uri.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (!bucket.is_empty()).then(|| S3Uri {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct ObjectStore {
    client: Client,
}

impl ObjectStore {
    /// A path-style client for MinIO at `endpoint` (e.g. `http://127.0.0.1:30900`).
    pub fn new(endpoint: &str, access_key: &str, secret_key: &str) -> ObjectStore {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                access_key, secret_key, None, None, "weir-e2e",
            ))
            .force_path_style(true)
            .build();
        ObjectStore {
            client: Client::from_conf(config),
        }
    }

    /// Every object key under `uri`, page by page.
    pub async fn list(&self, uri: &S3Uri) -> Result<Vec<String>> {
        let prefix = format!("{}/", uri.prefix);
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&uri.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| Error::S3 {
                    action: "list",
                    bucket: uri.bucket.clone(),
                    key: prefix.clone(),
                    message: DisplayErrorContext(e).to_string(),
                })?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    pub async fn read(&self, bucket: &str, key: &str) -> Result<Vec<u8>> {
        let error = |message: String| Error::S3 {
            action: "get",
            bucket: bucket.to_string(),
            key: key.to_string(),
            message,
        };
        let object = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| error(DisplayErrorContext(e).to_string()))?;
        let body = object
            .body
            .collect()
            .await
            .map_err(|e| error(e.to_string()))?;
        Ok(body.into_bytes().to_vec())
    }

    /// The committed objects under an output prefix (see [`sequence::is_committed`]).
    pub async fn committed_objects(&self, output: &S3Uri) -> Result<Vec<String>> {
        let prefix = format!("{}/", output.prefix);
        Ok(self
            .list(output)
            .await?
            .into_iter()
            .filter(|key| {
                key.strip_prefix(&prefix)
                    .is_some_and(sequence::is_committed)
            })
            .collect())
    }

    /// Reads every committed `sequence-check` record under `output` and tallies them.
    pub async fn sequence_report(&self, output: &S3Uri) -> Result<Report> {
        let mut records = Vec::new();
        for key in self.committed_objects(output).await? {
            let bytes = self.read(&output.bucket, &key).await?;
            let text = String::from_utf8_lossy(&bytes);
            for (index, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let record: Record =
                    serde_json::from_str(line).map_err(|source| Error::Record {
                        bucket: output.bucket.clone(),
                        key: key.clone(),
                        line: index + 1,
                        source,
                    })?;
                records.push(record);
            }
        }
        Ok(sequence::report(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris_split_into_bucket_and_prefix() {
        assert_eq!(
            S3Uri::parse("s3://weir/e2e/steady/output/"),
            Some(S3Uri {
                bucket: "weir".into(),
                prefix: "e2e/steady/output".into()
            })
        );
        assert_eq!(S3Uri::parse("file:///tmp/x"), None);
        assert_eq!(S3Uri::parse("s3://"), None);
    }
}
