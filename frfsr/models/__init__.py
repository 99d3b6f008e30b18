from .frfsr import FRFSR, AlignedTextures, Correspondence, EncodedRefs, RefViews, Restoration

__all__ = ["FRFSR", "RefViews", "EncodedRefs", "Correspondence", "AlignedTextures", "Restoration"]
