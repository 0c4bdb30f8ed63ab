/** `yun image pull NAME`: the builder of each image Yun knows how to make. */
import { pullTinyImage, TINY_IMAGE, type PullOptions } from "./tiny.js";
import { AVAILABLE_IMAGES, type ImageInfo } from "./store.js";
import { ImageError } from "./util.js";

export type { PullOptions };

/** The image `yun run` boots and the cloud offers first when none is named. */
export const DEFAULT_IMAGE = TINY_IMAGE;

/** Builds (or confirms) the image `name` and returns its description. */
export async function pullImage(name: string, opts: PullOptions = {}): Promise<ImageInfo> {
  switch (name) {
    case TINY_IMAGE:
      return pullTinyImage(opts);
    default:
      throw new ImageError(`unknown image "${name}"; available: ${AVAILABLE_IMAGES.join(", ")}`);
  }
}
