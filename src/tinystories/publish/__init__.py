"""Publishing what a run made: model and dataset cards (cards.py, dataset_card.py), the chat
template of instruct checkpoints, and `tinystories export` with its Hub upload (export.py).

Not a stage: the training loop writes a checkpoint's card through `cards.publish_checkpoint`,
the dataset writer writes data/README.md through `dataset_card.write_dataset_card`.
"""
