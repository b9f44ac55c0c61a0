//! fed-sx protobuf contracts: the wire format peers exchange and the gRPC services the
//! processes of a node call each other with. Generated at build time from `proto/fedsx`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The wire format: `Activity` and `SignedEnvelope`.
pub mod wire {
    pub mod v1 {
        tonic::include_proto!("fedsx.wire.v1");
    }
}

/// `fedsx.logstore.v1.LogStore`: per-actor append-only streams.
pub mod logstore {
    pub mod v1 {
        tonic::include_proto!("fedsx.logstore.v1");
    }
}

/// `fedsx.kernel.v1.Kernel`: actors, inbound pipeline, publishing.
pub mod kernel {
    pub mod v1 {
        tonic::include_proto!("fedsx.kernel.v1");

        impl FlowStatus {
            /// `running`, `suspended`, `done`, `failed` (`unspecified`): the name people see.
            pub fn label(self) -> String {
                self.as_str_name()
                    .trim_start_matches("FLOW_STATUS_")
                    .to_ascii_lowercase()
            }

            /// The status with this label.
            pub fn from_label(label: &str) -> Option<FlowStatus> {
                FlowStatus::from_str_name(&format!("FLOW_STATUS_{}", label.to_ascii_uppercase()))
                    .filter(|s| *s != FlowStatus::Unspecified)
            }
        }
    }
}

/// `fedsx.delivery.v1.Delivery`: the durable per-peer retry queue.
pub mod delivery {
    pub mod v1 {
        tonic::include_proto!("fedsx.delivery.v1");
    }
}

/// Encoded `FileDescriptorSet` of every fed-sx proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fedsx_descriptor.bin"));

/// Trailer metadata key carrying a stream's current tip on an expected-tip conflict.
pub const TIP_METADATA_KEY: &str = "fedsx-tip";
