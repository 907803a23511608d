//! Outbound calls: the `data-<name>` watchdog posted to the WatchdogListener after each outcome,
//! and the HTTP POST that tells the app about a swap.

use std::{path::PathBuf, time::Duration};

use autocrane_api::{
    data_report::DataReport,
    keys::data_watchdog,
    proto::watchdog_v1::{
        Level, PodRef, PostWatchdogRequest, watchdog_listener_client::WatchdogListenerClient,
    },
    watchdog::Level as WatchdogLevel,
};
use autocrane_runtime::client::AutoCraneChannel;
use bytes::Bytes;
use http_body_util::Full;

/// Posts the deployer's outcomes as watchdogs.
#[derive(Clone, Debug)]
pub struct Reporter {
    client: WatchdogListenerClient<AutoCraneChannel>,
    token_file: Option<PathBuf>,
    pod: PodRef,
}

impl Reporter {
    /// A reporter for `pod`, authenticating with the token in `token_file` (re-read on every post,
    /// since projected tokens rotate).
    pub fn new(
        channel: AutoCraneChannel,
        token_file: Option<PathBuf>,
        namespace: String,
        name: String,
    ) -> Self {
        Self {
            client: WatchdogListenerClient::new(channel),
            token_file,
            pod: PodRef { namespace, name },
        }
    }

    /// Posts watchdog `data-<source>` with the report's level and message ([`DataReport`]'s
    /// grammar, which the controller parses).
    pub async fn report(&self, source: &str, report: &DataReport) -> Result<(), String> {
        let level = match report.level() {
            WatchdogLevel::Info => Level::Info,
            WatchdogLevel::Warning => Level::Warning,
            WatchdogLevel::Error => Level::Error,
        };
        let message = report.format();
        let mut request = tonic::Request::new(PostWatchdogRequest {
            pod: Some(self.pod.clone()),
            name: data_watchdog(source),
            level: level as i32,
            message,
            ttl: None,
        });
        request.set_timeout(Duration::from_secs(10));
        if let Some(path) = &self.token_file {
            autocrane_runtime::client::authorize_from_file(&mut request, path).await?;
        }
        self.client
            .clone()
            .post_watchdog(request)
            .await
            .map(|_| ())
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
    }
}

/// POSTs a JSON body to a local `http://` URL.
pub async fn post_json(url: &str, body: String) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "timed out after 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the app answered {}", response.status()))
    }
}
