//! Embedding Plexus: a chat reactor that gossips lines between nodes.
//!
//! Run two or three terminals on loopback:
//!
//! ```text
//! cargo run -p plexus-p2p --example chat -- --listen 127.0.0.1:27001
//! # it prints its address, id@127.0.0.1:27001; in another terminal:
//! cargo run -p plexus-p2p --example chat -- --listen 127.0.0.1:27002 --peer <id>@127.0.0.1:27001
//! ```
//!
//! Type a line in any terminal and it appears in all of them.
//!
//! The whole embedding is three steps:
//! 1. a message type (here a prost struct; normally generated from a
//!    `.proto` file),
//! 2. a [`Reactor`]: its channels, and what to do with a message,
//! 3. a [`Switch`] built with a key, a NodeInfo, a config, a transport and
//!    the reactor, then started and told whom to dial.
//!
//! Gossip is flood with a seen-set: each line has a random id; a node that
//! sees an id for the first time prints the line and forwards it to every
//! peer but the sender (`broadcast_except`).

use std::{collections::HashSet, sync::Mutex};

use clap::Parser;
use plexus_p2p::{
    ChannelDescriptor, Envelope, NetAddress, NodeInfo, NodeKey, Reactor, Switch, SwitchConfig,
    TcpTransport,
};
use prost::Message;

/// The chat channel id (applications pick ids the stack does not use).
pub const CHAT: u8 = 0x70;

/// One chat line.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChatLine {
    /// Random id, for de-duplication.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Who wrote it.
    #[prost(string, tag = "2")]
    pub from: String,
    /// The text.
    #[prost(string, tag = "3")]
    pub text: String,
}

/// Prints new lines and forwards them; `lines` keeps what it saw.
#[derive(Default)]
pub struct ChatReactor {
    seen: Mutex<HashSet<u64>>,
    /// Every line received, in order, and a wake-up for each (for tests).
    pub lines: Mutex<Vec<ChatLine>>,
    pub heard: tokio::sync::Notify,
}

impl Reactor for ChatReactor {
    type Message = ChatLine;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(CHAT).priority(5).recv_message_capacity(4096)]
    }

    async fn receive(&self, env: Envelope<ChatLine>) {
        if !self.seen.lock().unwrap().insert(env.message.id) {
            return;
        }
        println!("<{}> {}", env.message.from, env.message.text);
        self.lines.lock().unwrap().push(env.message.clone());
        self.heard.notify_waiters();
        env.switch.broadcast_except(&env.peer.id(), CHAT, env.message.encode_to_vec()).await;
    }
}

impl ChatReactor {
    /// Sends a line of ours to every peer.
    pub async fn say(&self, switch: &Switch, text: &str) {
        let line = ChatLine {
            id: rand::random(),
            from: switch.node_info().moniker.clone(),
            text: text.into(),
        };
        self.seen.lock().unwrap().insert(line.id);
        switch.broadcast(CHAT, line.encode_to_vec()).await;
    }
}

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:27001")]
    listen: String,
    /// Peers to join (id@host:port), kept connected.
    #[arg(long)]
    peer: Vec<NetAddress>,
    /// Name shown with your lines.
    #[arg(long, default_value = "anon")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config =
        SwitchConfig { listen_addr: Some(args.listen.parse()?), ..SwitchConfig::default() };
    let (chat, info) =
        (std::sync::Arc::new(ChatReactor::default()), NodeInfo::new("plexus-chat", &args.name));
    let switch = Switch::builder(NodeKey::generate(), info, config, TcpTransport)
        .shared_reactor(chat.clone())
        .build()?;
    switch.start().await?;
    println!("listening as {}", switch.net_address().expect("listening"));
    switch.dial_peers(args.peer, true).await;
    let mut stdin =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    while let Some(line) = stdin.next_line().await? {
        chat.say(&switch, &line).await;
    }
    switch.stop().await;
    Ok(())
}
