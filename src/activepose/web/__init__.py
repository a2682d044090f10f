"""The labelling page: a FastAPI server (`server`) and its static page (`static/`), served by `activepose annotate`."""
