//! The trace service's Export call with a request already encoded (`export::request`): the
//! generated client would take prost structs only. Same path, method and framing as it.

use bytes::BufMut as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::{ProstCodec, ProstDecoder};

const SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Encoded request bytes out, the prost-decoded response in.
struct RawRequest;

impl Codec for RawRequest {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<ExportTraceServiceResponse, ExportTraceServiceResponse>::raw_decoder(BufferSettings::default())
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

pub async fn export_traces(channel: Channel, request: Vec<u8>) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let mut req = tonic::Request::new(request);
    req.extensions_mut().insert(tonic::GrpcMethod::new(SERVICE, "Export"));
    Ok(grpc.unary(req, PathAndQuery::from_static(PATH), RawRequest).await?.into_inner())
}
