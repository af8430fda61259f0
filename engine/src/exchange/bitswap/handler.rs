//! The Bitswap connection handler: reads messages from the peer's streams and writes ours.
//!
//! Inbound: every stream the peer opens is read message by message (at most
//! [`MAX_INBOUND_STREAMS`] at once, each dropped after [`STREAM_IDLE`] without a message);
//! decoding, which hashes every block, happens here on the connection's task, not on the
//! swarm task. Outbound: one stream at a time carries the queued messages in order and is
//! closed once the queue stayed empty for [`LINGER`] (Helia, for one, aborts a stream idle for
//! 10 s).

use std::collections::VecDeque;
use std::io;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt, FutureExt, StreamExt};
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamProtocol, StreamUpgradeError,
    SubstreamProtocol,
};

use super::wire::{read_frame, write_frame, DecodeError, Message};
use super::{MAX_INBOUND_STREAMS, SEND_TIMEOUT, STREAM_IDLE};

/// How long an outbound stream with nothing to send stays open for the next message.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// What the handler tells the behaviour.
#[derive(Debug)]
pub enum ToBehaviour {
    /// A message from the peer, and how many of its blocks were skipped (unsupported hash).
    Received { message: Message, skipped: usize },
    /// A queued message of `bytes` (as estimated when queued) left the queue: written or lost.
    Done { bytes: usize },
    /// The peer does not speak Bitswap on this connection.
    Unsupported,
    /// The peer sent something that is not a Bitswap message; its stream was dropped.
    Bad(String),
}

type Reading = BoxFuture<'static, (Stream, io::Result<Option<Result<ToBehaviour, DecodeError>>>)>;

enum Out {
    /// No stream.
    Idle,
    /// A stream was requested.
    Opening,
    Ready(Stream),
    /// Nothing to send for now: the stream stays open for [`LINGER`], then is closed.
    Lingering(Stream, std::pin::Pin<Box<tokio::time::Sleep>>),
    /// Writing one message of `bytes`.
    Writing(BoxFuture<'static, io::Result<Stream>>, usize),
    Closing(BoxFuture<'static, ()>),
}

pub struct Handler {
    protocol: StreamProtocol,
    reading: FuturesUnordered<Reading>,
    queue: VecDeque<(Message, usize)>,
    out: Out,
    events: VecDeque<ToBehaviour>,
    /// The peer refused the protocol: messages for it are dropped at once.
    unsupported: bool,
}

impl Handler {
    pub fn new(protocol: StreamProtocol) -> Self {
        Self {
            protocol,
            reading: FuturesUnordered::new(),
            queue: VecDeque::new(),
            out: Out::Idle,
            events: VecDeque::new(),
            unsupported: false,
        }
    }

    fn read_next(&mut self, mut stream: Stream) {
        self.reading.push(
            async move {
                let r = match tokio::time::timeout(STREAM_IDLE, read_frame(&mut stream)).await {
                    Err(_) => Ok(None), // idle: let it go
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(None)) => Ok(None),
                    Ok(Ok(Some(frame))) => Ok(Some(Message::decode(frame).map(|d| {
                        ToBehaviour::Received {
                            message: d.message,
                            skipped: d.skipped,
                        }
                    }))),
                };
                (stream, r)
            }
            .boxed(),
        );
    }

    fn drop_queue(&mut self) {
        for (_, bytes) in self.queue.drain(..) {
            self.events.push_back(ToBehaviour::Done { bytes });
        }
    }
}

fn write(mut stream: Stream, message: Message) -> BoxFuture<'static, io::Result<Stream>> {
    async move {
        match tokio::time::timeout(SEND_TIMEOUT, write_frame(&mut stream, &message)).await {
            Ok(Ok(_)) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }
    .boxed()
}

impl ConnectionHandler for Handler {
    type FromBehaviour = (Message, usize);
    type ToBehaviour = ToBehaviour;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
    }

    fn on_behaviour_event(&mut self, msg: (Message, usize)) {
        if self.unsupported {
            self.events.push_back(ToBehaviour::Done { bytes: msg.1 });
        } else {
            self.queue.push_back(msg);
        }
    }

    fn connection_keep_alive(&self) -> bool {
        !self.queue.is_empty() || !matches!(self.out, Out::Idle) || !self.reading.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), ToBehaviour>> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(ev));
            }
            match self.reading.poll_next_unpin(cx) {
                Poll::Ready(Some((stream, Ok(Some(Ok(ev)))))) => {
                    self.read_next(stream);
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(ev));
                }
                Poll::Ready(Some((_, Ok(Some(Err(e)))))) => {
                    self.events.push_back(ToBehaviour::Bad(e.to_string()));
                    continue;
                }
                Poll::Ready(Some((_, Err(e)))) => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        self.events.push_back(ToBehaviour::Bad(e.to_string()));
                    } else {
                        tracing::debug!(error = %e, "a Bitswap stream ended");
                    }
                    continue;
                }
                Poll::Ready(Some((_, Ok(None)))) => continue,
                Poll::Ready(None) | Poll::Pending => {}
            }
            match std::mem::replace(&mut self.out, Out::Idle) {
                Out::Idle if !self.queue.is_empty() => {
                    self.out = Out::Opening;
                    return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                        protocol: SubstreamProtocol::new(
                            ReadyUpgrade::new(self.protocol.clone()),
                            (),
                        ),
                    });
                }
                Out::Idle => {}
                Out::Opening => self.out = Out::Opening,
                Out::Ready(stream) => match self.queue.pop_front() {
                    Some((message, bytes)) => {
                        self.out = Out::Writing(write(stream, message), bytes);
                        continue;
                    }
                    None => {
                        self.out = Out::Lingering(stream, Box::pin(tokio::time::sleep(LINGER)));
                        continue;
                    }
                },
                Out::Lingering(stream, mut sleep) => {
                    if !self.queue.is_empty() {
                        self.out = Out::Ready(stream);
                        continue;
                    }
                    match sleep.poll_unpin(cx) {
                        Poll::Pending => self.out = Out::Lingering(stream, sleep),
                        Poll::Ready(()) => {
                            let mut stream = stream;
                            self.out = Out::Closing(
                                async move {
                                    let _ = stream.close().await;
                                }
                                .boxed(),
                            );
                            continue;
                        }
                    }
                }
                Out::Writing(mut fut, bytes) => match fut.poll_unpin(cx) {
                    Poll::Pending => self.out = Out::Writing(fut, bytes),
                    Poll::Ready(r) => {
                        self.events.push_back(ToBehaviour::Done { bytes });
                        match r {
                            Ok(stream) => self.out = Out::Ready(stream),
                            Err(e) => {
                                tracing::debug!(error = %e, "writing a Bitswap message failed")
                            }
                        }
                        continue;
                    }
                },
                Out::Closing(mut fut) => match fut.poll_unpin(cx) {
                    Poll::Pending => self.out = Out::Closing(fut),
                    Poll::Ready(()) => continue,
                },
            }
            return Poll::Pending;
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                if self.reading.len() >= MAX_INBOUND_STREAMS {
                    tracing::debug!("too many Bitswap streams from one peer; dropped a new one");
                } else {
                    self.read_next(stream);
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => self.out = Out::Ready(stream),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.out = Out::Idle;
                if matches!(error, StreamUpgradeError::NegotiationFailed) {
                    self.unsupported = true;
                    self.events.push_back(ToBehaviour::Unsupported);
                } else {
                    tracing::debug!(error = %error, "opening a Bitswap stream failed");
                }
                self.drop_queue();
            }
            _ => {}
        }
    }
}
