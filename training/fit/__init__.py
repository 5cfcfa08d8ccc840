"""Stage 2, fitting: AE-C, E-C and the CNN tagger on the corpus, resumably (``python -m training.fit CONFIG``;
``config`` holds the settings, ``loop`` the training, ``data`` the patches it draws)."""
