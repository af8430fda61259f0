//! Reading JSON request bodies: any or no `Content-Type`, with or without `Content-Length`
//! (chunked bodies from the v1 JS SDK are normal: never 411), never more than the limit.
//!
//! A body whose `Content-Length` is over the limit is refused before reading it; a chunked body
//! is refused as soon as what arrived passes the limit, so memory per request is bounded by the
//! limit. Parsing is the route's business (`events.rs`): this only delivers the bytes.

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use warp::Filter;

use crate::error::ApiError;

/// The whole request body, at most `limit` bytes (else 413 `ERR_PAYLOAD_TOO_LARGE`).
pub fn limited(limit: u64) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, body| read(length, body, limit))
}

async fn read<S, B>(length: Option<u64>, body: S, limit: u64) -> Result<Bytes, warp::Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    if length.is_some_and(|l| l > limit) {
        return Err(warp::reject::custom(ApiError::payload_too_large(limit)));
    }
    // Trust the announced length only up to the limit for the allocation.
    let mut buf = BytesMut::with_capacity(length.unwrap_or(0).min(limit) as usize);
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            warp::reject::custom(ApiError::bad_request(format!("cannot read body: {e}")))
        })?;
        if (buf.len() + chunk.remaining()) as u64 > limit {
            return Err(warp::reject::custom(ApiError::payload_too_large(limit)));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}
