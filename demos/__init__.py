"""Demos built on visionsae and its pipelines (the Gradio app, the blindspot audit script)."""
