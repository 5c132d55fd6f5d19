//! The gRPC codec of every service and client: prost's, except that a
//! message is encoded into a buffer reserved at its exact length. tonic
//! starts from 8 KiB and grows the buffer as prost writes, so a 2 MiB
//! LIST page was copied again at each doubling.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// prost messages, encoded by [`ExactEncoder`], decoded as tonic-prost does.
#[derive(Debug)]
pub struct ExactCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for ExactCodec<T, U> {
    fn default() -> Self {
        ExactCodec(PhantomData)
    }
}

impl<T, U> Codec for ExactCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ExactEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ExactEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Reserves a message's encoded length, then encodes it.
#[derive(Debug)]
pub struct ExactEncoder<T>(PhantomData<fn() -> T>);

impl<T: Message> Encoder for ExactEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // `encode` would check the space left, which a growable buffer
        // always has.
        item.encode_raw(buf);
        Ok(())
    }
}
