//! Streamed answers: NDJSON frames (`run`, `ticks/watch`).

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use megaplan_cloud_api::wire::Frame;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// NDJSON response body fed by a channel; ends when the sender is dropped or `stop` fires.
/// Frames already queued are still sent. When `stop` ends a stream that has not carried a
/// `result` frame yet, the `on_stop` frames are sent last, so a client cut off by shutdown
/// learns why instead of seeing the stream just end.
pub fn ndjson_body(
    rx: mpsc::Receiver<Frame>,
    stop: CancellationToken,
    on_stop: Vec<Frame>,
) -> Response {
    struct Feed {
        rx: mpsc::Receiver<Frame>,
        stop: CancellationToken,
        on_stop: std::collections::VecDeque<Frame>,
        stopped: bool,
    }
    let feed = Feed {
        rx,
        stop,
        on_stop: on_stop.into(),
        stopped: false,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let frame = if feed.stopped {
            feed.on_stop.pop_front()
        } else {
            tokio::select! {
                biased;
                f = feed.rx.recv() => f,
                _ = feed.stop.cancelled() => {
                    feed.stopped = true;
                    feed.on_stop.pop_front()
                }
            }
        };
        if matches!(frame, Some(Frame::Result { .. })) {
            // The command's own result is out: nothing may follow it.
            feed.on_stop.clear();
        }
        frame.map(|f| {
            let line = bytes::Bytes::from(f.to_line());
            (Ok::<_, std::io::Error>(line), feed)
        })
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
