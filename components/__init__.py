"""The library: pure PyTorch / numpy (+ diffusers, clean-fid). Never imports zenml, dvc, kfp or kubernetes."""
