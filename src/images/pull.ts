/** `yun image pull NAME`: the builder of each image Yun knows how to make. */
import { FULL_IMAGE, pullFullImage } from "./full.js";
import { pullTinyImage, TINY_IMAGE, type PullOptions } from "./tiny.js";
import { AVAILABLE_IMAGES, type ImageInfo } from "./store.js";
import { ImageError } from "./util.js";

export type { PullOptions };

/** The image `yun run` boots and the cloud offers first when none is named. */
// The full image is not the default yet: on Yun its boot to a shell takes many minutes (issue 14's
// speed work comes first), so `yun run` and the cloud keep the busybox image unless told.
export const DEFAULT_IMAGE = TINY_IMAGE;

/** Builds (or confirms) the image `name` and returns its description. */
export async function pullImage(name: string, opts: PullOptions = {}): Promise<ImageInfo> {
  switch (name) {
    case TINY_IMAGE:
      if (opts.versions !== undefined)
        throw new ImageError(`--versions is for the full image (${FULL_IMAGE}), not ${name}`);
      return pullTinyImage(opts);
    case FULL_IMAGE:
      return pullFullImage(opts);
    default:
      throw new ImageError(`unknown image "${name}"; available: ${AVAILABLE_IMAGES.join(", ")}`);
  }
}
