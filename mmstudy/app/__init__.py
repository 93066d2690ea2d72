"""The Gradio inspector (`mmstudy app`): the interface, its plain helpers and its drawing."""
