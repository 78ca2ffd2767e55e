"""Answers from a checkpoint folder with plain transformers, as a user without this project gets them.

Run by ``tests/test_plain_transformers.py`` in a venv that holds only torch, transformers, PyAV, Pillow
and numpy (``.venv-plain``, built by ``scripts/test.sh``), from a directory outside the checkout:

    python plain_transformers_answers.py CKPT IMAGE VIDEO QUESTION MAX_NEW_TOKENS

Prints one JSON object: the greedy answers to QUESTION about IMAGE (``AutoProcessor`` +
``AutoModelForImageTextToText``, and ``pipeline("image-text-to-text")``) and about VIDEO read as uniform
frames, and the error a codec-mode video gives without the codec reader.
"""

import importlib.util
import json
import sys

from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline


def main() -> None:
    checkpoint, image_path, video_path, question, max_new_tokens = sys.argv[1:6]
    max_new_tokens = int(max_new_tokens)
    present = [name for name in ("llava", "cv_reader") if importlib.util.find_spec(name) is not None]
    if present:
        raise SystemExit(f"this venv must not have the project installed, but it has {present}")
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True).eval()
    image = Image.open(image_path)

    def ask(part: str, **media) -> str:
        messages = [{"role": "user", "content": [{"type": part}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=prompt, return_tensors="pt", **media)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.answer(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

    answers = {
        "processor_class": type(processor).__name__,
        "model_class": type(model).__name__,
        "image": ask("image", images=[image]),
        "video_frames": ask("video", videos=[video_path], video_mode="frames"),
    }
    pipe = pipeline("image-text-to-text", model=checkpoint, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    result = pipe(text=messages, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
    answers["pipeline_image"] = processor.answer(result[0]["generated_text"])
    try:
        ask("video", videos=[video_path], video_mode="codec")
        answers["codec_error"] = None
    except ImportError as error:
        answers["codec_error"] = str(error)
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
