//! The S3 backend (and S3-compatible servers).

use std::io;
use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
};
use bytes::Bytes;
use weir_spec::s3::Purpose;

use super::location::join_prefix;
use super::{MULTIPART_THRESHOLD, ObjectMeta, Result, S3Options, StorageError, io_err};

/// Smallest part size used for multipart uploads; grown when a file would need > 10,000 parts.
const MIN_PART_SIZE: u64 = 16 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
/// DeleteObjects accepts at most 1000 keys per request.
const DELETE_BATCH: usize = 1000;

/// A store rooted at `bucket/prefix`. Keys are validated by [`super::ObjectStore`] before they
/// get here; `uri` arguments are the full URIs to name in errors.
pub(super) struct S3Store {
    client: Client,
    bucket: String,
    /// Without leading or trailing '/' (empty = whole bucket), like [`super::Location::S3`].
    prefix: String,
}

impl S3Store {
    /// Builds the client but performs no network I/O; `uri` (the store's root) names the
    /// store if that fails.
    pub(super) async fn open(
        s3: &S3Options,
        purpose: Purpose,
        bucket: &str,
        prefix: &str,
        uri: &str,
    ) -> Result<S3Store> {
        Ok(S3Store {
            client: weir_spec::s3::client(s3, purpose)
                .await
                .map_err(|message| StorageError::S3 {
                    op: "configure the client",
                    uri: uri.to_string(),
                    message,
                })?,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// A store rooted at `bucket/prefix` sharing this one's client (and its connection pool).
    pub(super) fn with_root(&self, bucket: &str, prefix: &str) -> S3Store {
        S3Store {
            client: self.client.clone(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }
    }

    /// Same joining rules as `Location::join`, so backend and location stay in step.
    pub(super) fn child(&self, sub: &str) -> S3Store {
        self.with_root(&self.bucket, &join_prefix(&self.prefix, sub))
    }

    /// `None` at the bucket root.
    pub(super) fn parent(&self) -> Option<S3Store> {
        if self.prefix.is_empty() {
            return None;
        }
        let up = self.prefix.rsplit_once('/').map_or("", |(up, _)| up);
        Some(self.with_root(&self.bucket, up))
    }

    /// The key prefix this store is rooted at.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(super) async fn put(&self, key: &str, data: Bytes, uri: &str) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(full_key(&self.prefix, key))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| s3_err("PutObject", uri, &e))?;
        Ok(())
    }

    pub(super) async fn put_if_absent(&self, key: &str, data: Bytes, uri: &str) -> Result<bool> {
        let full = full_key(&self.prefix, key);
        let mut conflicts = 0;
        loop {
            let sent = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .if_none_match("*")
                .body(ByteStream::from(data.clone()))
                .send()
                .await;
            match sent {
                Ok(_) => return Ok(true),
                Err(e) if is_precondition_failed(&e) => return Ok(false),
                // 409 ConditionalRequestConflict: another conditional write of this
                // key was in progress; AWS asks to retry, which then gets 200 or 412.
                Err(e) if status_of(&e) == Some(409) && conflicts < 5 => {
                    conflicts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * conflicts)).await;
                }
                Err(e) => return Err(s3_err("PutObject (If-None-Match)", uri, &e)),
            }
        }
    }

    /// Streams the local file `path` from disk (never held in memory); files over
    /// [`MULTIPART_THRESHOLD`] use multipart upload.
    pub(super) async fn put_file(
        &self,
        key: &str,
        path: &Path,
        uri: &str,
        src_uri: &str,
    ) -> Result<()> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| io_err(src_uri, e))?
            .len();
        let full = full_key(&self.prefix, key);
        if size <= MULTIPART_THRESHOLD {
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| io_err(src_uri, io::Error::other(e)))?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(full)
                .body(body)
                .send()
                .await
                .map_err(|e| s3_err("PutObject", uri, &e))?;
            Ok(())
        } else {
            multipart_upload(&self.client, &self.bucket, &full, path, size, uri, src_uri).await
        }
    }

    pub(super) async fn get(&self, key: &str, uri: &str) -> Result<Bytes> {
        let body = get_object_body(
            &self.client,
            &self.bucket,
            &full_key(&self.prefix, key),
            uri,
        )
        .await?;
        collect_body(body, uri).await
    }

    pub(super) async fn get_file(&self, key: &str, dest: &Path, uri: &str) -> Result<u64> {
        let mut body = get_object_body(
            &self.client,
            &self.bucket,
            &full_key(&self.prefix, key),
            uri,
        )
        .await?;
        let dest_uri = format!("file://{}", dest.display());
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| io_err(&dest_uri, e))?;
        let mut written = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| io_err(uri, io::Error::other(e)))?
        {
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(|e| io_err(&dest_uri, e))?;
            written += chunk.len() as u64;
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| io_err(&dest_uri, e))?;
        Ok(written)
    }

    pub(super) async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        uri: &str,
    ) -> Result<Bytes> {
        if len == 0 {
            // An empty Range header is invalid; still report a missing object.
            return match self.head(key, uri).await? {
                Some(_) => Ok(Bytes::new()),
                None => Err(StorageError::NotFound {
                    uri: uri.to_string(),
                }),
            };
        }
        let last = offset.saturating_add(len - 1);
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full_key(&self.prefix, key))
            .range(format!("bytes={offset}-{last}"))
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) if is_missing_object(&e) => {
                return Err(StorageError::NotFound {
                    uri: uri.to_string(),
                });
            }
            // 416: the range starts at or after the end (including any range of an
            // empty object), which our contract defines as an empty read.
            Err(e) if is_invalid_range(&e) => return Ok(Bytes::new()),
            Err(e) => return Err(s3_err("GetObject", uri, &e)),
        };
        let ranged = out.content_range().is_some();
        let data = collect_body(out.body, uri).await?;
        if ranged {
            Ok(data)
        } else {
            // A server that ignores Range sends the whole object; cut it down ourselves.
            Ok(slice_range(data, offset, len))
        }
    }

    pub(super) async fn head(&self, key: &str, uri: &str) -> Result<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(full_key(&self.prefix, key))
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0),
            )),
            // HEAD responses have no body, so a 404 carries no error code to tell a
            // missing key from a missing bucket; treat it as a missing key.
            Err(e) if is_missing_object(&e) || status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(s3_err("HeadObject", uri, &e)),
        }
    }

    pub(super) async fn list(&self, prefix: &str, uri: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        list_s3(
            &self.client,
            &self.bucket,
            &self.prefix,
            prefix,
            uri,
            |page| {
                out.extend(page);
                async { Ok(()) }
            },
        )
        .await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub(super) async fn delete(&self, key: &str, uri: &str) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(full_key(&self.prefix, key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // S3 itself answers 204 for missing keys; some compatible servers do not.
            Err(e) if is_missing_object(&e) => Ok(()),
            Err(e) => Err(s3_err("DeleteObject", uri, &e)),
        }
    }

    /// Deletes every key under `folder/` (no trailing '/' on `folder`; `""` = everything under
    /// the root).
    pub(super) async fn delete_folder(&self, folder: &str, uri: &str) -> Result<()> {
        let list_prefix = if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        };
        let (client, bucket, root) = (&self.client, &self.bucket, &self.prefix);
        // Delete page by page: each listing page holds at most 1000 keys, exactly one
        // DeleteObjects batch, so memory stays bounded for huge prefixes.
        list_s3(client, bucket, root, &list_prefix, uri, |page| {
            let keys: Vec<String> = page.into_iter().map(|m| full_key(root, &m.key)).collect();
            delete_batch(client, bucket, keys, uri)
        })
        .await
    }

    /// CopyObject + DeleteObject: S3 has no rename.
    pub(super) async fn rename(&self, from: &str, to: &str, from_uri: &str) -> Result<()> {
        let src_key = full_key(&self.prefix, from);
        let copy = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(full_key(&self.prefix, to))
            .copy_source(copy_source(&self.bucket, &src_key))
            .send()
            .await;
        match copy {
            Ok(_) => {}
            Err(e) if is_missing_object(&e) => {
                return Err(StorageError::NotFound {
                    uri: from_uri.to_string(),
                });
            }
            Err(e) => return Err(s3_err("CopyObject", from_uri, &e)),
        }
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(src_key)
            .send()
            .await
            .map_err(|e| s3_err("DeleteObject", from_uri, &e))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// S3 helpers
// ---------------------------------------------------------------------------------------------

/// Key inside the bucket for a key relative to the store root.
fn full_key(root_prefix: &str, key: &str) -> String {
    if root_prefix.is_empty() {
        key.to_string()
    } else {
        format!("{root_prefix}/{key}")
    }
}

/// An SDK call's error on one line, the same from one attempt to the next: the error chain
/// (which names the cause, e.g. "Connection refused") plus the service's error code and
/// message, without the SDK's debug dump (request ids, raw response) that would make every
/// repetition of one problem read differently in logs and in a StreamJob's status.
fn s3_err<E>(op: &'static str, uri: &str, err: &SdkError<E, HttpResponse>) -> StorageError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    let mut message = error_chain(err);
    if let Some(service) = err.as_service_error() {
        for detail in [service.code(), service.message()].into_iter().flatten() {
            if !message.contains(detail) {
                message.push_str(": ");
                message.push_str(detail);
            }
        }
    }
    StorageError::S3 {
        op,
        uri: uri.to_string(),
        message,
    }
}

/// Any other error of an S3 operation (building a request, reading a body), on one line.
fn other_err<E: std::error::Error + 'static>(op: &'static str, uri: &str, err: &E) -> StorageError {
    StorageError::S3 {
        op,
        uri: uri.to_string(),
        message: error_chain(err),
    }
}

/// `error: source: source's source`, skipping a level that only repeats the one before.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// True when the service said the *object* does not exist. A missing bucket (`NoSuchBucket`,
/// also a 404) is deliberately excluded: that is a configuration error, not an absent object.
fn is_missing_object<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err.as_service_error().and_then(|e| e.code()) {
        Some(code) => code == "NoSuchKey" || code == "NotFound",
        None => matches!(err, SdkError::ServiceError(_)) && status_of(err) == Some(404),
    }
}

/// 412: a conditional request's precondition (here `If-None-Match: *`) did not hold.
fn is_precondition_failed<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.as_service_error().and_then(|e| e.code()) == Some("PreconditionFailed")
        || (matches!(err, SdkError::ServiceError(_)) && status_of(err) == Some(412))
}

fn is_invalid_range<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.as_service_error().and_then(|e| e.code()) == Some("InvalidRange")
        || (matches!(err, SdkError::ServiceError(_)) && status_of(err) == Some(416))
}

/// The body of a whole object; `NotFound` when it is missing.
async fn get_object_body(
    client: &Client,
    bucket: &str,
    key: &str,
    uri: &str,
) -> Result<ByteStream> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            if is_missing_object(&e) {
                StorageError::NotFound {
                    uri: uri.to_string(),
                }
            } else {
                s3_err("GetObject", uri, &e)
            }
        })?;
    Ok(out.body)
}

async fn collect_body(body: ByteStream, uri: &str) -> Result<Bytes> {
    body.collect()
        .await
        .map(|agg| agg.into_bytes())
        .map_err(|e| other_err("GetObject", uri, &e))
}

fn slice_range(data: Bytes, offset: u64, len: u64) -> Bytes {
    let total = data.len() as u64;
    let start = offset.min(total);
    let end = offset.saturating_add(len).min(total);
    // Both bounds are <= data.len(), which is a usize, so the conversions are lossless.
    data.slice(start as usize..end as usize)
}

/// `x-amz-copy-source` value: `bucket/key`, URL-encoded (the SDK does not encode it).
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    for &b in bucket.as_bytes().iter().chain(b"/").chain(key.as_bytes()) {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Lists `root/prefix*` page by page (handling continuation tokens), handing each page, with
/// keys relative to `root`, to `on_page`.
async fn list_s3<F, Fut>(
    client: &Client,
    bucket: &str,
    root: &str,
    prefix: &str,
    uri: &str,
    mut on_page: F,
) -> Result<()>
where
    F: FnMut(Vec<ObjectMeta>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    // With a non-empty root, "" must become "root/" rather than "root", or `root2/...` would
    // match too.
    let strip = if root.is_empty() {
        String::new()
    } else {
        format!("{root}/")
    };
    let full_prefix = format!("{strip}{prefix}");
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&full_prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| s3_err("ListObjectsV2", uri, &e))?;
        let metas = page
            .contents()
            .iter()
            .filter_map(|obj| {
                let key = obj.key()?.strip_prefix(&strip)?;
                Some(ObjectMeta {
                    key: key.to_string(),
                    size: u64::try_from(obj.size().unwrap_or(0)).unwrap_or(0),
                })
            })
            .collect();
        on_page(metas).await?;
        match page.next_continuation_token() {
            Some(next) if page.is_truncated().unwrap_or(false) => token = Some(next.to_string()),
            _ => return Ok(()),
        }
    }
}

async fn delete_batch(client: &Client, bucket: &str, keys: Vec<String>, uri: &str) -> Result<()> {
    for chunk in keys.chunks(DELETE_BATCH) {
        let objects = chunk
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| other_err("DeleteObjects", uri, &e))?;
        tracing::debug!(%uri, count = objects.len(), "storage delete batch");
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| other_err("DeleteObjects", uri, &e))?;
        let out = client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| s3_err("DeleteObjects", uri, &e))?;
        // DeleteObjects reports per-key failures in a 200 response; they must not be lost.
        if let Some(first) = out.errors().first() {
            return Err(StorageError::S3 {
                op: "DeleteObjects",
                uri: uri.to_string(),
                message: format!(
                    "{} of {} keys failed, first {:?}: {} {}",
                    out.errors().len(),
                    chunk.len(),
                    first.key().unwrap_or_default(),
                    first.code().unwrap_or_default(),
                    first.message().unwrap_or_default()
                ),
            });
        }
    }
    Ok(())
}

async fn multipart_upload(
    client: &Client,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
    uri: &str,
    src_uri: &str,
) -> Result<()> {
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .map_err(|e| s3_err("CreateMultipartUpload", uri, &e))?;
    let Some(upload_id) = created.upload_id().map(str::to_string) else {
        return Err(StorageError::S3 {
            op: "CreateMultipartUpload",
            uri: uri.to_string(),
            message: "response has no upload id".to_string(),
        });
    };
    let part_size = MIN_PART_SIZE.max(size.div_ceil(MAX_PARTS));
    tracing::debug!(%uri, size, part_size, "storage multipart upload");

    let upload = async {
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 1i32;
        while offset < size {
            let len = part_size.min(size - offset);
            // Each part streams its slice straight from disk.
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| io_err(src_uri, io::Error::other(e)))?;
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .send()
                .await
                .map_err(|e| s3_err("UploadPart", uri, &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                    .build(),
            );
            offset += len;
            number += 1;
        }
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_err("CompleteMultipartUpload", uri, &e))?;
        Ok::<(), StorageError>(())
    };
    let result = upload.await;
    if result.is_err() {
        // Abandoned uploads keep their parts (and cost) until aborted; best effort only, the
        // original error is the one worth reporting.
        if let Err(e) = client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await
        {
            tracing::warn!(%uri, error = %error_chain(&e), "aborting multipart upload failed");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_is_encoded() {
        assert_eq!(copy_source("b", "a/b c+d.txt"), "b/a/b%20c%2Bd.txt");
        assert_eq!(copy_source("b", "ü"), "b/%C3%BC");
    }

    #[test]
    fn slice_range_bounds() {
        let data = Bytes::from_static(b"0123456789");
        assert_eq!(slice_range(data.clone(), 2, 3), Bytes::from_static(b"234"));
        assert_eq!(slice_range(data.clone(), 8, 10), Bytes::from_static(b"89"));
        assert!(slice_range(data.clone(), 10, 1).is_empty());
        assert!(slice_range(data, u64::MAX, u64::MAX).is_empty());
    }
}
