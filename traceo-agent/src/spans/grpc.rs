//! An OTLP service's Export call with a request already encoded (`Signal::body`): the
//! generated clients would take prost structs only. Same path, method and framing as they.

use std::sync::Arc;

use bytes::BufMut as _;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::{ProstCodec, ProstDecoder};

/// An encoded request's chunks, shared so that they come back once tonic has written them.
type Chunks = Arc<Vec<Vec<u8>>>;

/// Encoded request bytes out, the prost-decoded response `R` in.
struct RawRequest<R>(std::marker::PhantomData<R>);

impl<R: prost::Message + Default + Send + 'static> Codec for RawRequest<R> {
    type Encode = Chunks;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<R, R>::raw_decoder(BufferSettings::default())
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Chunks;
    type Error = tonic::Status;

    fn encode(&mut self, item: Chunks, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        // Room for the whole request first: put chunk by chunk, the buffer grew (and was
        // copied) several times over, ending up to twice the request's size.
        dst.reserve(item.iter().map(Vec::len).sum());
        for chunk in item.iter() {
            dst.put_slice(chunk);
        }
        Ok(())
    }
}

/// Call `path` (`/package.Service/Method`) with `request` encoded (its chunks one after
/// another).
pub async fn export<R: prost::Message + Default + Send + 'static>(
    channel: Channel,
    path: &'static str,
    request: Chunks,
) -> Result<R, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let mut req = tonic::Request::new(request);
    req.extensions_mut().insert(tonic::GrpcMethod::new(service, method));
    let codec = RawRequest::<R>(std::marker::PhantomData);
    Ok(grpc.unary(req, PathAndQuery::from_static(path), codec).await?.into_inner())
}
