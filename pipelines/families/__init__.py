"""The model families: what each is (specs), the classes that bind them to their code
(registry), and families of one's own (custom).
"""
