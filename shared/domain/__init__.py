"""What tagsmith does, without HTTP: images, labels, embeddings, model versions, training, predictions."""
