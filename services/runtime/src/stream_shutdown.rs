//! Ends open response streams when the process shuts down.
//!
//! A server-streaming call (`Watch…`, `Fetch`) can stay open for hours; graceful shutdown would
//! otherwise wait for it until the drain period runs out. This layer wraps every response body: once
//! the shutdown signal has fired and the body has nothing ready to send, it ends the stream with
//! status OK and the message "server shutting down". The streaming contracts in `proto/` tell
//! clients to reconnect with their resume token when a stream ends, so nothing is lost. Bodies that
//! have data ready (a unary response, a stream mid-burst) are never cut between frames.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::shutdown::Shutdown;

/// The tower layer; see the module documentation.
#[derive(Clone, Debug)]
pub struct StreamShutdownLayer {
    shutdown: Shutdown,
}

impl StreamShutdownLayer {
    /// Ends open streams once `shutdown` fires.
    pub fn new(shutdown: Shutdown) -> Self {
        Self { shutdown }
    }
}

impl<S> tower::Layer<S> for StreamShutdownLayer {
    type Service = StreamShutdownService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamShutdownService {
            inner,
            shutdown: self.shutdown.clone(),
        }
    }
}

/// The service [`StreamShutdownLayer`] produces.
#[derive(Clone, Debug)]
pub struct StreamShutdownService<S> {
    inner: S,
    shutdown: Shutdown,
}

impl<S, Req, B> tower::Service<Req> for StreamShutdownService<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ShutdownBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let future = self.inner.call(request);
        let shutdown = self.shutdown.clone();
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|inner| ShutdownBody::new(inner, shutdown)))
        })
    }
}

/// A response body that ends itself (with OK trailers) once shutdown fired and it is idle.
pub struct ShutdownBody<B> {
    inner: B,
    fired: Pin<Box<dyn Future<Output = ()> + Send>>,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Streaming,
    SendTrailers,
    Done,
}

impl<B> std::fmt::Debug for ShutdownBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownBody")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<B> ShutdownBody<B> {
    fn new(inner: B, shutdown: Shutdown) -> Self {
        Self {
            inner,
            fired: Box::pin(async move { shutdown.wait().await }),
            state: State::Streaming,
        }
    }
}

impl<B> Body for ShutdownBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match this.state {
            State::Done => return Poll::Ready(None),
            State::SendTrailers => {
                this.state = State::Done;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                trailers.insert(
                    "grpc-message",
                    http::HeaderValue::from_static("server%20shutting%20down"),
                );
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            State::Streaming => {}
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_none() {
                    this.state = State::Done;
                }
                Poll::Ready(frame)
            }
            Poll::Pending => match this.fired.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.state = State::SendTrailers;
                    Pin::new(this).poll_frame(cx)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done || (self.state == State::Streaming && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Streaming => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}
