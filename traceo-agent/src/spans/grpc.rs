//! An OTLP service's Export call with a request already encoded (`Signal::body`): the
//! generated clients would take prost structs only. Same path, method and framing as they.

use bytes::BufMut as _;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::{ProstCodec, ProstDecoder};

/// Encoded request bytes out, the prost-decoded response `R` in.
struct RawRequest<R>(std::marker::PhantomData<R>);

impl<R: prost::Message + Default + Send + 'static> Codec for RawRequest<R> {
    type Encode = Vec<u8>;
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
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

/// Call `path` (`/package.Service/Method`) with `request` encoded.
pub async fn export<R: prost::Message + Default + Send + 'static>(
    channel: Channel,
    path: &'static str,
    request: Vec<u8>,
) -> Result<R, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let mut req = tonic::Request::new(request);
    req.extensions_mut().insert(tonic::GrpcMethod::new(service, method));
    let codec = RawRequest::<R>(std::marker::PhantomData);
    Ok(grpc.unary(req, PathAndQuery::from_static(path), codec).await?.into_inner())
}
