//! NodeInfo as it arrives in its one frame: length-delimited decode,
//! conversion and rule checks, compatibility with ours; what is accepted
//! re-encodes to a NodeInfo that is accepted again with the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_p2p::NodeInfo;
use prost::Message;

fuzz_target!(|frame: &[u8]| {
    let Ok(p) = plexus_proto::p2p::NodeInfo::decode_length_delimited(frame) else { return };
    let Ok(info) = NodeInfo::from_proto(p) else { return };
    let ours = NodeInfo::new(&"ab".repeat(32), "fuzz");
    let _ = ours.compatible_with(&info);
    let _ = info.compatible_with(&ours);
    let again =
        NodeInfo::from_proto(info.to_proto()).expect("an accepted NodeInfo re-encodes validly");
    assert_eq!(again.to_proto(), info.to_proto());
    let _ = info.to_proto().encode_length_delimited_to_vec();
});
