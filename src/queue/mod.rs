//! A typed message queue done right: [`Queue`](crate::Queue) over a Redis
//! stream with consumer groups (`shared/stream.rs`), the same machinery as
//! the flash sale's order stream.
//!
//! Why not the tutorials' list (`LPUSH` to send, `RPOP`/`BRPOP` to
//! receive): the pop removes the message before the consumer has handled
//! it, so a consumer that crashes in between loses it, and nothing can tell.
//! Here a message stays pending until its consumer acknowledges it; one
//! whose consumer stopped is taken over after `claim_after`; one that fails
//! `max_deliveries` times (or cannot be decoded) goes to a dead-letter
//! stream with its reason. Delivery is at least once: handle messages
//! idempotently.
//!
//! Keys: `hc:q:{<name>}:s` (the stream) and `hc:q:{<name>}:d` (dead
//! letters), in one Cluster slot; the `hc:q:` prefix is the queue's own.

use serde::{Serialize, de::DeserializeOwned};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::codec::{Codec, DefaultCodec};
use crate::error::{Error, ErrorKind};
use crate::shared::stream::{self, Acker, GroupReader, ReadOptions, StreamKeys};

/// Longest accepted queue name, in bytes.
pub const MAX_QUEUE_NAME_LEN: usize = 256;

/// A queue of `T` values, encoded with the codec `C`. Cheap to clone; made
/// with [`Client::queue`].
pub struct Queue<T, C = DefaultCodec> {
    client: Client,
    name: Arc<str>,
    codec: Arc<C>,
    options: ReadOptions,
    max_size: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T, C> Clone for Queue<T, C> {
    fn clone(&self) -> Self {
        Queue {
            client: self.client.clone(),
            name: self.name.clone(),
            codec: self.codec.clone(),
            options: self.options,
            max_size: self.max_size,
            _t: PhantomData,
        }
    }
}

impl<T, C> std::fmt::Debug for Queue<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish()
    }
}

/// One consumer of a group on a queue.
pub struct QueueConsumer<T, C = DefaultCodec> {
    reader: GroupReader,
    acker: Acker,
    codec: Arc<C>,
    _t: PhantomData<fn() -> T>,
}

impl<T, C> std::fmt::Debug for QueueConsumer<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueConsumer").finish_non_exhaustive()
    }
}

/// A message handed to a consumer: handle it, then [`ack`](Self::ack) it.
#[must_use = "a message not acknowledged is delivered again"]
pub struct Message<T> {
    value: T,
    id: String,
    deliveries: u32,
    acker: Acker,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Message<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("value", &self.value)
            .field("id", &self.id)
            .field("deliveries", &self.deliveries)
            .finish()
    }
}

fn keys(name: &str) -> Result<StreamKeys, Error> {
    if name.is_empty() || name.len() > MAX_QUEUE_NAME_LEN || name.contains(['{', '}']) {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("queue name must be 1 to {MAX_QUEUE_NAME_LEN} bytes without `{{` or `}}`"),
        ));
    }
    Ok(StreamKeys {
        stream: format!("hc:q:{{{name}}}:s"),
        dead: format!("hc:q:{{{name}}}:d"),
    })
}

impl<T> Queue<T, DefaultCodec> {
    pub(crate) fn new(client: Client, name: String) -> Self {
        Queue {
            client,
            name: name.into(),
            codec: Arc::new(DefaultCodec::default()),
            options: ReadOptions::default(),
            max_size: 1 << 20,
            _t: PhantomData,
        }
    }
}

impl<T, C> Queue<T, C>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    C: Codec,
{
    /// Replaces the codec (default [`DefaultCodec`]).
    pub fn codec<C2: Codec>(self, codec: C2) -> Queue<T, C2> {
        Queue {
            client: self.client,
            name: self.name,
            codec: Arc::new(codec),
            options: self.options,
            max_size: self.max_size,
            _t: PhantomData,
        }
    }

    /// How long a message handed to a consumer may stay unacknowledged
    /// before another consumer takes it over. Default 30 s.
    pub fn claim_after(mut self, idle: Duration) -> Self {
        self.options.claim_after = idle;
        self
    }

    /// Deliveries without an acknowledgement after which a message goes to
    /// the dead letters. Default 5.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.options.max_deliveries = n;
        self
    }

    /// How long one wait for new messages lasts before the consumer checks
    /// for messages to take over. Default 1 s.
    pub fn block(mut self, block: Duration) -> Self {
        self.options.block = block.max(Duration::from_millis(1));
        self
    }

    /// The largest encoded message, in bytes. Default 1 MiB; a larger one
    /// is refused by `push` with [`ErrorKind::ValueTooLarge`].
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes;
        self
    }

    /// Appends `value`; returns its id in the stream.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for a bad queue name,
    /// [`ErrorKind::Encode`] or [`ErrorKind::ValueTooLarge`] before anything
    /// is sent; [`ErrorKind::Redis`] if Redis fails (the message may or may
    /// not have been added: consumers must be idempotent anyway).
    pub async fn push(&self, value: &T) -> Result<String, Error> {
        let keys = keys(&self.name)?;
        let mut bytes = Vec::new();
        self.codec
            .encode(value, &mut bytes)
            .map_err(|e| Error::new(ErrorKind::Encode, e.to_string()))?;
        if bytes.len() > self.max_size {
            return Err(Error::new(
                ErrorKind::ValueTooLarge,
                format!(
                    "message is {} bytes; max_size is {}",
                    bytes.len(),
                    self.max_size
                ),
            ));
        }
        let server = &self.client.server;
        server
            .call(
                server.raw_command(
                    redis::cmd("XADD")
                        .arg(&keys.stream)
                        .arg("*")
                        .arg("v")
                        .arg(bytes),
                ),
            )
            .await
            .map_err(|e| Error::redis("XADD", e))
    }

    /// Joins consumer group `group` as `name` (creating the group from the
    /// queue's first message if needed).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for bad names; [`ErrorKind::Redis`].
    pub async fn consumer(&self, group: &str, name: &str) -> Result<QueueConsumer<T, C>, Error> {
        let keys = keys(&self.name)?;
        let reader =
            GroupReader::join(self.client.server.clone(), keys, group, name, self.options).await?;
        Ok(QueueConsumer {
            acker: reader.acker(),
            reader,
            codec: self.codec.clone(),
            _t: PhantomData,
        })
    }

    /// Removes every message that every group has acknowledged.
    ///
    /// # Errors
    /// [`ErrorKind::Redis`].
    pub async fn trim(&self) -> Result<u64, Error> {
        let keys = keys(&self.name)?;
        stream::trim(&self.client.server, &keys.stream).await
    }
}

impl<T, C> QueueConsumer<T, C>
where
    T: DeserializeOwned,
    C: Codec,
{
    /// The next message (ours not yet acknowledged, one taken over, or a
    /// new one, waiting for it). A message that does not decode as `T` goes
    /// to the dead letters and is skipped.
    ///
    /// # Errors
    /// [`ErrorKind::Redis`]: call again; nothing is lost.
    pub async fn next(&mut self) -> Result<Message<T>, Error> {
        loop {
            let entry = self.reader.next().await?;
            if let Some(m) = self.message(entry).await? {
                return Ok(m);
            }
        }
    }

    /// [`next`](Self::next), or `Ok(None)` if none comes within `timeout`.
    ///
    /// # Errors
    /// As [`next`](Self::next).
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Message<T>>, Error> {
        let Some(deadline) = tokio::time::Instant::now().checked_add(timeout) else {
            // Past the end of the clock: no deadline.
            return self.next().await.map(Some);
        };
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(entry) = self.reader.next_timeout(left).await? else {
                return Ok(None);
            };
            if let Some(m) = self.message(entry).await? {
                return Ok(Some(m));
            }
        }
    }

    async fn message(&self, entry: stream::Entry) -> Result<Option<Message<T>>, Error> {
        let decoded = entry
            .field("v")
            .ok_or_else(|| "no `v` field".to_owned())
            .and_then(|b| self.codec.decode::<T>(&b).map_err(|e| e.to_string()));
        match decoded {
            Ok(value) => Ok(Some(Message {
                value,
                id: entry.id,
                deliveries: entry.deliveries,
                acker: self.acker.clone(),
            })),
            Err(why) => {
                self.reader
                    .dead_letter_now(&entry.id, &format!("does not decode: {why}"))
                    .await?;
                Ok(None)
            }
        }
    }
}

impl<T> Message<T> {
    /// The message.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Deliveries so far, this one included.
    pub fn deliveries(&self) -> u32 {
        self.deliveries
    }

    /// Its id in the stream.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Acknowledges it: handled, never delivered again. `Ok(false)` if it
    /// was not pending any more.
    ///
    /// # Errors
    /// [`ErrorKind::Redis`]: it will be delivered again.
    pub async fn ack(self) -> Result<bool, Error> {
        self.acker.ack(&self.id).await
    }
}
