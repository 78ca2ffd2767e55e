"""Step 1 of the input flow, processing: conversations and media -> token ids with ``<image>`` placeholders and
visual inputs.

* :mod:`.conversation`: the chat templates and their one renderer (``Conversation.segments``), the stop strings;
* :mod:`.prompts`: a record or a conversation -> token ids (``-200`` per ``<image>``) and training labels;
* :mod:`.media`: images, frames, videos and codec packs -> ``VisualInputs`` (pixels or patches and ``(t, h, w)``
  positions) and their placeholder text;
* :mod:`.video`: video decoding for the two video modes, over the codec reader (``cv_reader``).

Step 2, :mod:`llava.batching`, expands each placeholder into its visual tokens and pads or packs; step 3,
:mod:`llava.model`, scatters the visual features into them. The checkpoint's own processor
(``llava.model.processing_llava.LlavaOVProcessor``) makes the same ids in one call, for users outside this project.
"""
