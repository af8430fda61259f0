//! `/api/v1/blobs` (API.md, blob section): upload, download with `Range`, `HEAD`, list,
//! delete, and names.
//!
//! Bodies are streamed both ways: an upload goes to the engine piece by piece as hyper delivers
//! it (never whole in memory), a download is a body stream fed by the engine's read task (see
//! `ndjson.rs` for how a streaming body reaches the server). Status codes come from `error.rs`.
//! Range handling: one `bytes=` range (`a-b`, `a-`, `-n`) gives 206 with `Content-Range`; a
//! range that does not fit gives 416 with `Content-Range: bytes */<size>`; several ranges or an
//! unparsable header are ignored (200 with everything), as RFC 9110 allows.

use bytes::{Buf, Bytes};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use shoal_engine::blobs::{replicas, BlobService, BlobsError, Cid, PutOptions};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::error::{self, ApiError};
use crate::ndjson::{BoxError, StreamSlot};

/// Header telling whether every chunk of the blob is stored on this node.
pub const COMPLETE_HEADER: &str = "x-shoal-complete";

#[derive(Deserialize)]
struct PutQuery {
    name: Option<String>,
    /// Nodes that must hold the blob pinned before 201 (API.md); parsed by [`replicas`].
    replicas: Option<String>,
}

/// The `replicas` query parameter: 1 to `MAX_REPLICAS`, else the node's default.
fn replicas(query: Option<&str>, default: u32) -> Result<u32, ApiError> {
    let max = replicas::MAX_REPLICAS;
    let Some(raw) = query else {
        return Ok(default);
    };
    match raw.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "replicas: `{raw}` is not a node count from 1 to {max}"
        ))),
    }
}

#[derive(Deserialize)]
struct NameBody {
    cid: String,
}

/// The blob routes.
pub fn routes(
    blobs: BlobService,
    max_body_bytes: u64,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with = move || {
        let blobs = blobs.clone();
        warp::any().map(move || blobs.clone())
    };
    let post = warp::path!("api" / "v1" / "blobs")
        .and(warp::post())
        .and(with())
        .and(warp::query::<PutQuery>())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(put);
    let list = warp::path!("api" / "v1" / "blobs")
        .and(warp::get())
        .and(with())
        .then(|blobs: BlobService| async move {
            match blobs.list().await {
                Ok(list) => warp::reply::json(&list).into_response(),
                Err(e) => error::from_blobs(e).into_response(),
            }
        });
    let set_name = warp::path!("api" / "v1" / "blobs" / "names" / String)
        .and(warp::put())
        .and(with())
        .and(crate::body::limited(max_body_bytes))
        .then(set_name);
    let by_name = warp::path!("api" / "v1" / "blobs" / "names" / String)
        .and(get_or_head())
        .and(with())
        .and(warp::header::optional::<String>("range"))
        .then(
            |name: String, body: bool, blobs: BlobService, range| async move {
                let name = match percent_decode(&name) {
                    Ok(name) => name,
                    Err(e) => return e.into_response(),
                };
                match blobs.resolve(&name).await {
                    Ok(cid) => serve(blobs, cid, range, body).await,
                    Err(e) => error::from_blobs(e).into_response(),
                }
            },
        );
    let get = warp::path!("api" / "v1" / "blobs" / String)
        .and(get_or_head())
        .and(with())
        .and(warp::header::optional::<String>("range"))
        .then(
            |cid: String, body: bool, blobs: BlobService, range| async move {
                match parse_cid(&cid) {
                    Ok(cid) => serve(blobs, cid, range, body).await,
                    Err(e) => e.into_response(),
                }
            },
        );
    let delete = warp::path!("api" / "v1" / "blobs" / String)
        .and(warp::delete())
        .and(with())
        .then(|cid: String, blobs: BlobService| async move {
            let cid = match parse_cid(&cid) {
                Ok(cid) => cid,
                Err(e) => return e.into_response(),
            };
            match blobs.delete(cid).await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error::from_blobs(e).into_response(),
            }
        });
    post.or(list)
        .unify()
        .or(set_name)
        .unify()
        .or(by_name)
        .unify()
        .or(get)
        .unify()
        .or(delete)
        .unify()
}

/// GET (`true`: send the body) or HEAD (`false`).
fn get_or_head() -> impl Filter<Extract = (bool,), Error = warp::Rejection> + Clone {
    warp::get()
        .map(|| true)
        .or(warp::head().map(|| false))
        .unify()
}

fn parse_cid(s: &str) -> Result<Cid, ApiError> {
    s.parse()
        .map_err(|e| ApiError::bad_request(format!("cid: `{s}` is not a CID: {e}")))
}

async fn put<S, B>(
    blobs: BlobService,
    query: PutQuery,
    mime: Option<String>,
    length: Option<u64>,
    body: S,
) -> Response
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    let wanted = match replicas(query.replicas.as_deref(), blobs.config().default_replicas) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let limit = blobs.config().max_blob_bytes;
    if length.is_some_and(|l| l > limit) {
        return error::from_blobs(BlobsError::TooLarge { limit }).into_response();
    }
    let body = body.map_ok(|mut b| b.copy_to_bytes(b.remaining()));
    let options = PutOptions {
        name: query.name.filter(|n| !n.is_empty()),
        mime: mime.filter(|m| !m.is_empty()),
    };
    let meta = match blobs.put(body, options).await {
        Ok(meta) => meta,
        Err(e) => return error::from_blobs(e).into_response(),
    };
    // Stored and pinned here; with replicas, 201 only once that many nodes hold it, else 202
    // (replication goes on in the background).
    let reached = match blobs.replicate(&meta, wanted).await {
        Ok(n) => n,
        Err(e) => return error::from_blobs(e).into_response(),
    };
    let status = if reached >= wanted as usize {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({
            "cid": meta.cid.to_string(),
            "size": meta.size,
            "replicas": reached,
        })),
        status,
    )
    .into_response()
}

async fn set_name(name: String, blobs: BlobService, body: Bytes) -> Response {
    let name = match percent_decode(&name) {
        Ok(name) => name,
        Err(e) => return e.into_response(),
    };
    let parsed: NameBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return ApiError::bad_request(format!("malformed JSON body: {e}")).into_response()
        }
    };
    let cid = match parse_cid(&parsed.cid) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match blobs.set_name(&name, cid).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error::from_blobs(e).into_response(),
    }
}

/// A GET (with `body`) or HEAD of blob `cid`.
async fn serve(blobs: BlobService, cid: Cid, range: Option<String>, body: bool) -> Response {
    let opened = match blobs.open(cid).await {
        Ok(o) => o,
        Err(e) => return error::from_blobs(e).into_response(),
    };
    let size = opened.size();
    let (status, start, end) = match range.as_deref().map(|r| parse_range(r, size)) {
        None | Some(RangeSpec::Ignore) => (StatusCode::OK, 0, size),
        Some(RangeSpec::Bytes(a, b)) => (StatusCode::PARTIAL_CONTENT, a, b),
        Some(RangeSpec::Unsatisfiable) => {
            return ApiError::range_not_satisfiable(size).into_response()
        }
    };
    let mut resp = Response::new(warp::hyper::body::Bytes::new().into());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let mime = opened
        .meta
        .mime
        .as_deref()
        .and_then(|m| HeaderValue::from_str(m).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, mime);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", opened.meta.cid)) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    h.insert(
        COMPLETE_HEADER,
        HeaderValue::from_static(if opened.complete { "true" } else { "false" }),
    );
    if body && end > start {
        let stream = blobs
            .read_range(&opened, start, end)
            .map_err(|e| Box::new(e) as BoxError)
            .boxed();
        resp.extensions_mut().insert(StreamSlot::new(stream));
    }
    resp
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Serve everything (no usable range).
    Ignore,
    /// Bytes `a..b` (end exclusive).
    Bytes(u64, u64),
    Unsatisfiable,
}

fn parse_range(header: &str, size: u64) -> RangeSpec {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeSpec::Ignore,
        (true, false) => match b.parse::<u64>() {
            // Suffix: the last n bytes.
            Ok(n) if n == 0 || size == 0 => RangeSpec::Unsatisfiable,
            Ok(n) => RangeSpec::Bytes(size.saturating_sub(n), size),
            Err(_) => RangeSpec::Ignore,
        },
        (false, _) => {
            let Ok(first) = a.parse::<u64>() else {
                return RangeSpec::Ignore;
            };
            let last = if b.is_empty() {
                None
            } else {
                match b.parse::<u64>() {
                    Ok(l) if l >= first => Some(l),
                    _ => return RangeSpec::Ignore,
                }
            };
            if first >= size {
                return RangeSpec::Unsatisfiable;
            }
            let end = last.map_or(size, |l| l.saturating_add(1).min(size));
            RangeSpec::Bytes(first, end)
        }
    }
}

/// Decodes the `%XX` escapes of a blob name's path segment (names may contain any character);
/// a `%` not followed by two hex digits stays as it is. Works on bytes, then checks the result
/// is UTF-8 (400 if not): it sliced the text at byte offsets, so `%a` followed by a multibyte
/// character panicked the handler (issue 12 item 9), and `u8::from_str_radix` took `%+1` for
/// an escape.
fn percent_decode(s: &str) -> Result<String, ApiError> {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let high = bytes.get(i + 1).copied().and_then(hex);
            let low = bytes.get(i + 2).copied().and_then(hex);
            if let (Some(high), Some(low)) = (high, low) {
                out.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| {
        ApiError::bad_request(format!(
            "name: `{s}` is not UTF-8 once its %-escapes are decoded"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-0", 10), Bytes(0, 1));
        assert_eq!(parse_range("bytes=2-", 10), Bytes(2, 10));
        assert_eq!(parse_range("bytes=-3", 10), Bytes(7, 10));
        assert_eq!(parse_range("bytes=-30", 10), Bytes(0, 10));
        assert_eq!(parse_range("bytes=5-100", 10), Bytes(5, 10));
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=3-1", 10), Ignore);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Ignore);
        assert_eq!(parse_range("items=0-1", 10), Ignore);
        assert_eq!(parse_range("bytes=x-1", 10), Ignore);
    }

    #[test]
    fn names_are_percent_decoded() {
        let ok = |s: &str| percent_decode(s).unwrap();
        assert_eq!(ok("a%20b%2Fc"), "a b/c");
        assert_eq!(ok("100%"), "100%");
        assert_eq!(ok("%zz%4"), "%zz%4");
        assert_eq!(ok("%E2%82%AC"), "€");
        assert_eq!(ok("caf%C3%a9"), "café");
    }

    /// Issue 12 item 9: `%a` followed by a multibyte character sliced inside that character
    /// and panicked; `%+1` was taken for an escape; undecodable bytes were replaced silently.
    #[test]
    fn issue12_escapes_next_to_multibyte_characters_do_not_panic() {
        let ok = |s: &str| percent_decode(s).unwrap();
        assert_eq!(ok("%a€"), "%a€");
        assert_eq!(ok("%€"), "%€");
        assert_eq!(ok("€%"), "€%");
        assert_eq!(ok("%e€%"), "%e€%");
        assert_eq!(ok("%+1"), "%+1");
        assert_eq!(ok("%-1"), "%-1");
        for bad in ["%ff", "%C3", "a%80b", "%E2%82"] {
            let e = percent_decode(bad).unwrap_err();
            assert_eq!(e.code(), "ERR_BAD_REQUEST", "{bad}");
            assert!(e.message().contains("UTF-8"), "{bad}: {}", e.message());
        }
    }

    proptest! {
        /// Any text, rich in `%` and hex digits, decodes or is refused: never a panic.
        #[test]
        fn percent_decode_never_panics(s in "([%a-fA-F0-9+€é]|\\PC){0,24}") {
            let _ = percent_decode(&s);
        }

        /// Every name survives being escaped byte by byte.
        #[test]
        fn percent_decode_inverts_escaping(name in "\\PC{0,16}") {
            let escaped: String = name.bytes().map(|b| format!("%{b:02X}")).collect();
            prop_assert_eq!(percent_decode(&escaped).unwrap(), name);
        }

        /// Any `Range` header gets an answer; a range served is non-empty and inside the blob.
        #[test]
        fn parse_range_never_panics(
            header in "(bytes=)?[ 0-9,\\-]{0,12}|\\PC{0,20}",
            size in prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>()],
        ) {
            if let RangeSpec::Bytes(a, b) = parse_range(&header, size) {
                prop_assert!(a < b && b <= size, "{header}: {a}..{b} of {size}");
            }
        }

        /// Any path segment is a CID or a 400.
        #[test]
        fn parse_cid_never_panics(s in "(bafk|bafy|Qm|z|f01|B)?\\PC{0,60}") {
            let _ = parse_cid(&s);
        }
    }
}
