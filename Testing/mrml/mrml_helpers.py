"""Real MRML test fixtures (PyPI slicer-core): a scene, CT-like volume nodes, labelmaps."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

SHAPE_KJI = (12, 20, 24)


def oblique_ijk_to_ras(spacing=(0.8, 0.9, 2.5), origin=(-40.0, 25.0, -60.0), degrees=20.0) -> vtk.vtkMatrix4x4:
    """An IJK-to-RAS matrix with a rotation about S and anisotropic spacing (catches axis mix-ups)."""
    a = math.radians(degrees)
    rotation = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, rotation[r, c] * spacing[c])
        matrix.SetElement(r, 3, origin[r])
    return matrix


def add_ct_volume(scene, name: str = "CT abdomen", shape_kji=SHAPE_KJI, matrix=None, seed: int = 0):
    """A scalar volume node with int16 'HU' voxels; returns (node, voxels (k, j, i))."""
    rng = np.random.default_rng(seed)
    voxels = rng.integers(-200, 200, size=shape_kji, dtype=np.int16)
    image = vtk.vtkImageData()
    k, j, i = shape_kji
    image.SetDimensions(i, j, k)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = voxels.ravel()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(matrix or oblique_ijk_to_ras())
    node.CreateDefaultDisplayNodes()
    return node, voxels


def add_volume_from_image(scene, image, name: str = "CT phantom"):
    """A scalar volume node with the voxels and the grid of a SimpleITK image (LPS -> RAS)."""
    import SimpleITK as sitk

    voxels = sitk.GetArrayFromImage(image)
    vtk_image = vtk.vtkImageData()
    k, j, i = voxels.shape
    vtk_image.SetDimensions(i, j, k)
    vtk_image.AllocateScalars(numpy_support.get_vtk_array_type(voxels.dtype), 1)
    numpy_support.vtk_to_numpy(vtk_image.GetPointData().GetScalars())[:] = voxels.ravel()
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    axes = lps_to_ras @ np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    origin = lps_to_ras @ np.asarray(image.GetOrigin())
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(axes[r, c]))
        matrix.SetElement(r, 3, float(origin[r]))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(vtk_image)
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    return node


def liver_with_two_tumors(shape_kji=SHAPE_KJI) -> np.ndarray:
    """0 background, 1 liver, 2 tumor: a box liver with a larger and a smaller lesion inside."""
    labels = np.zeros(shape_kji, dtype=np.uint8)
    labels[2:10, 3:17, 4:20] = 1
    labels[4:7, 5:9, 6:10] = 2  # 3*4*4 = 48 voxels
    labels[7:8, 12:14, 15:17] = 2  # 4 voxels, separate
    return labels


def volume_fingerprint(volume_node) -> tuple:
    """Everything about a volume node the module promises not to change."""
    image = volume_node.GetImageData()
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return (hashlib.sha256(voxels.tobytes()).hexdigest(), image.GetDimensions(),
            tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4)),
            volume_node.GetName(), volume_node.GetStorageNodeID(), volume_node.GetTransformNodeID(),
            tuple(sorted(volume_node.GetAttributeNames() or ())))


def paint(segmentation_node, segment_id: str, volume_node, mask_kji: np.ndarray, mode="add") -> None:
    """Change a segment's voxels the way Segment Editor effects do: through the segmentation logic,
    "add" with the mask merge mode of the editor's add operation (other segments are not overwritten,
    so overlapping voxels move the edited segment to its own layer)."""
    from LiverTumorSegModuleLib import mrml

    logic = slicer.vtkSlicerSegmentationsModuleLogic
    image = mrml._oriented_image(mask_kji.astype(np.uint8), mrml.ijk_to_ras_matrix(volume_node))
    mode_value = {"add": logic.MODE_MERGE_MASK, "replace": logic.MODE_REPLACE}[mode]
    assert logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, mode_value, image.GetExtent())


def subject_hierarchy_with_study(scene, volume_node):
    """Patient/study items with the volume in the study, as Slicer's DICOM import makes them."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 1")
    study = hierarchy.CreateStudyItem(patient, "Study 1")
    hierarchy.CreateItem(study, volume_node)
    return hierarchy, study
