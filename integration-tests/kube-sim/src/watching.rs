//! Watch streams: newline-delimited events over chunked HTTP, resume from a resourceVersion
//! through the retained history, selector transitions, bookmarks, `sendInitialEvents`,
//! `timeoutSeconds`, closing on demand, and the in-stream 410 for a too-old resourceVersion.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::{Body, Shared, selectors, with_version};
use crate::status::ApiError;
use crate::store::Change;
use crate::table;

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    etype: &'a str,
    object: &'a Value,
}

fn line(etype: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&Event { etype, object }).expect("json");
    v.push(b'\n');
    Bytes::from(v)
}

struct WatchFilter {
    rt: ResourceType,
    key: String,
    ns: String,
    ls: LabelSelector,
    fs: FieldSelector,
    table: bool,
    include: String,
    sent_columns: bool,
}

impl WatchFilter {
    fn matches(&self, o: &Value) -> bool {
        (self.ns.is_empty() || o["metadata"]["namespace"].as_str() == Some(self.ns.as_str()))
            && self.ls.matches(o)
            && self.fs.matches(o)
    }

    fn render(&mut self, etype: &str, o: &Value) -> Bytes {
        if self.table {
            let mut t = table::build(
                &self.rt,
                &[o],
                &self.include,
                json!({"resourceVersion": o["metadata"]["resourceVersion"]}),
            );
            if self.sent_columns {
                t["columnDefinitions"] = json!([]);
            }
            self.sent_columns = true;
            return line(etype, &t);
        }
        if o["apiVersion"] != json!(self.rt.api_version()) {
            return line(etype, &with_version(&self.rt, o));
        }
        line(etype, o)
    }

    fn event(&mut self, c: &Change) -> Option<Bytes> {
        if c.key != self.key {
            return None;
        }
        let now = self.matches(&c.object);
        let before = c.old.as_ref().is_some_and(|o| self.matches(o));
        let etype = match c.etype {
            "DELETED" if before || now => "DELETED",
            "ADDED" if now => "ADDED",
            "MODIFIED" if now && before => "MODIFIED",
            "MODIFIED" if now => "ADDED",
            "MODIFIED" if before => "DELETED",
            _ => return None,
        };
        Some(self.render(etype, &c.object))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta}),
        )
    }
}

fn expired_line(rv: u64, oldest: u64) -> Bytes {
    line(
        "ERROR",
        &ApiError::expired(format!("too old resource version: {rv} ({oldest})")).to_status(),
    )
}

pub(crate) fn watch_resp(
    shared: &Arc<Shared>,
    rt: &ResourceType,
    ns: &str,
    name: Option<&str>,
    q: &HashMap<String, String>,
    table: bool,
    include: &str,
) -> Result<Response<Body>, ApiError> {
    let (ls, fs) = selectors(rt, q, name)?;
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let mut f = WatchFilter {
        rt: rt.clone(),
        key: rt.store_key(),
        ns: ns.to_string(),
        ls,
        fs,
        table,
        include: include.to_string(),
        sent_columns: false,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut first: Vec<Bytes> = Vec::new();
    let (sub, start_rv, alive) = {
        let st = shared.store.lock().expect("store");
        let sub = st.tx.subscribe();
        let mut alive = true;
        if rv_param.is_empty() || rv_param == "0" || send_initial {
            let bucket = st.objects.get(&f.key);
            for o in bucket.into_iter().flat_map(|b| b.values()) {
                if f.matches(o) {
                    first.push(f.render("ADDED", o));
                }
            }
            if send_initial && bookmarks {
                first.push(f.bookmark(st.rv, true));
            }
        } else {
            let r: u64 = rv_param.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {rv_param}"))
            })?;
            if r < st.oldest_rv {
                first.push(expired_line(r, st.oldest_rv));
                alive = false;
            } else {
                for c in st.history.iter().filter(|c| c.rv > r) {
                    if let Some(b) = f.event(c) {
                        first.push(b);
                    }
                }
            }
        }
        (sub, st.rv, alive)
    };
    let close_rx = shared.close_rx.clone();
    let interval = shared.bookmark_interval;
    tokio::spawn(watch_task(
        f,
        first,
        sub,
        start_rv,
        alive,
        tx,
        close_rx,
        Duration::from_secs(timeout),
        bookmarks,
        interval,
    ));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let body = StreamBody::new(stream).boxed_unsync();
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("response"))
}

#[allow(clippy::too_many_arguments)]
async fn watch_task(
    mut f: WatchFilter,
    first: Vec<Bytes>,
    mut sub: broadcast::Receiver<Arc<Change>>,
    start_rv: u64,
    alive: bool,
    tx: mpsc::Sender<Bytes>,
    mut close_rx: watch::Receiver<u64>,
    timeout: Duration,
    bookmarks: bool,
    interval: Duration,
) {
    close_rx.borrow_and_update();
    for b in first {
        if tx.send(b).await.is_err() {
            return;
        }
    }
    if !alive {
        return;
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut last_rv = start_rv;
    loop {
        tokio::select! {
            _ = &mut deadline => {
                if bookmarks {
                    let _ = tx.send(f.bookmark(last_rv, false)).await;
                }
                return;
            }
            _ = close_rx.changed() => return,
            _ = tx.closed() => return,
            _ = tick.tick(), if bookmarks => {
                if tx.send(f.bookmark(last_rv, false)).await.is_err() {
                    return;
                }
            }
            r = sub.recv() => match r {
                Ok(c) => {
                    if c.rv <= last_rv {
                        continue;
                    }
                    last_rv = c.rv;
                    if let Some(b) = f.event(&c)
                        && tx.send(b).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx.send(expired_line(last_rv, last_rv + 1)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
