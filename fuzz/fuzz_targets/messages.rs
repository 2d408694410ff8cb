//! Every peer message of the node's channels decoded from arbitrary bytes
//! (consensus 0x20, mempool 0x30, block sync 0x40, PEX 0x00), the chain
//! types converted and checked: a block or header that converts encodes
//! back to the same value, and body checks never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use plexus_reactors::chain::{Block, BodyChecked, Header, NetworkParams};
use prost::Message;

fn params() -> &'static NetworkParams {
    static P: OnceLock<NetworkParams> = OnceLock::new();
    P.get_or_init(NetworkParams::regtest)
}

fn block(b: plexus_proto::chain::Block) {
    if let Ok(block) = Block::from_proto(b) {
        let back = Block::from_proto(block.to_proto()).expect("a converted block converts back");
        assert_eq!(back, block);
        assert_eq!(block.to_proto().encoded_len(), block.size());
        let _ = block.hash();
        let _ = BodyChecked::check(params(), block);
    }
}

fn header(h: &plexus_proto::chain::Header) {
    if let Ok(header) = Header::from_proto(h) {
        assert_eq!(Header::from_bytes(&header.to_bytes()), header);
        assert_eq!(Header::from_proto(&header.to_proto()).ok(), Some(header));
    }
}

fuzz_target!(|data: &[u8]| {
    use plexus_proto::blocksync::message::Sum as B;
    use plexus_proto::chain::message::Sum as C;
    if let Ok(m) = plexus_proto::chain::Message::decode(data) {
        match m.sum {
            Some(C::NewBlock(n)) => n.block.into_iter().for_each(block),
            Some(C::Blocks(list)) => list.blocks.into_iter().take(64).for_each(block),
            Some(C::Status(_) | C::GetBlocks(_)) | None => {}
        }
    }
    if let Ok(m) = plexus_proto::blocksync::Message::decode(data) {
        match m.sum {
            Some(B::HeadersResponse(r)) => r.headers.iter().take(2000).for_each(header),
            Some(B::BlockResponse(r)) => r.block.into_iter().for_each(block),
            _ => {}
        }
    }
    let _ = plexus_proto::mempool::Message::decode(data);
    let _ = plexus_proto::pex::Message::decode(data);
});
