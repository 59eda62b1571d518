#![forbid(unsafe_code)]
pub mod proto { tonic::include_proto!("scistream"); }
