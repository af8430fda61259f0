//! Store writes that are not events: blob batches and pins. Each is one transaction on the
//! writer's connection, queued behind publishes like any other command.

use shoal_store::blob;
use shoal_store::Cid;

use super::{BlobWrite, State};

impl State {
    pub(super) fn blob(&mut self, write: BlobWrite) -> shoal_store::Result<()> {
        match write {
            BlobWrite::Init => blob::init(&mut self.writer),
            BlobWrite::Put {
                staged,
                chunks,
                links,
                upload,
            } => {
                let mut blocks: Vec<(Cid, &[u8])> =
                    chunks.iter().map(|(c, d)| (*c, d.as_ref())).collect();
                blocks.extend(links.iter().map(|(c, d)| (*c, d.as_slice())));
                match upload {
                    None => blob::put_staged(&mut self.writer, &staged, &blocks, None).map(|_| ()),
                    Some(id) => {
                        // Each manifest links the one before it, so the pin covers every batch
                        // whatever order they came in.
                        let prev = self.uploads.get(&id).copied().flatten();
                        let manifest = blob::put_staged(
                            &mut self.writer,
                            &staged,
                            &blocks,
                            Some((&id, prev)),
                        )?;
                        self.uploads.insert(id, manifest);
                        Ok(())
                    }
                }
            }
            BlobWrite::Commit { upload, last, meta } => {
                blob::commit_upload(&mut self.writer, &upload, &last, &meta)?;
                self.uploads.remove(&upload);
                Ok(())
            }
            BlobWrite::Abort { upload } => {
                blob::abort_upload(&mut self.writer, &upload)?;
                self.uploads.remove(&upload);
                Ok(())
            }
            BlobWrite::CacheRoot { cid, data, size } => {
                blob::cache_root(&mut self.writer, &cid, &data, size)
            }
            BlobWrite::PinReplica { cid } => blob::pin_replica(&mut self.writer, &cid),
        }
    }
}
