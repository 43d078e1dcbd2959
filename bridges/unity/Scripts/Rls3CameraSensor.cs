// The bridge's camera sensor: renders the scene camera only when the Agent asks for it.
using System;
using Unity.MLAgents.Sensors;
using UnityEngine;

namespace Rls3.Bridge
{
    /// <summary>A camera ISensor modelled on ML-Agents' CameraSensor (PNG-compressed, channel-first
    /// [3, H, W] observation spec), but it renders and encodes only when RequestRender() was called
    /// for this answer; otherwise it sends a cached black placeholder (format: "render" flag).
    /// ML-Agents' stock CameraSensor would render every step, including the many infeasible ones.</summary>
    public class Rls3CameraSensor : ISensor, IDisposable
    {
        readonly Camera m_Camera;
        readonly int m_Width, m_Height;
        readonly string m_Name;
        readonly Texture2D m_Texture;
        readonly byte[] m_Blank;
        readonly ObservationSpec m_Spec;
        bool m_RenderNext;

        public Rls3CameraSensor(Camera camera, int width, int height, string name = "Rls3Camera")
        {
            m_Camera = camera;
            m_Width = width;
            m_Height = height;
            m_Name = name;
            m_Spec = ObservationSpec.Visual(3, height, width);
            m_Texture = new Texture2D(width, height, TextureFormat.RGB24, false);
            var black = new Color32[width * height];
            m_Texture.SetPixels32(black);
            m_Texture.Apply();
            m_Blank = m_Texture.EncodeToPNG();
        }

        public int Width => m_Width;
        public int Height => m_Height;

        /// <summary>Render the camera into the observation of the coming answer.</summary>
        public void RequestRender() { m_RenderNext = true; }

        public ObservationSpec GetObservationSpec() => m_Spec;

        public byte[] GetCompressedObservation()
        {
            if (!m_RenderNext) return m_Blank;
            m_RenderNext = false;
            Capture();
            return m_Texture.EncodeToPNG();
        }

        public int Write(ObservationWriter writer) // only used when compression is unavailable
        {
            if (m_RenderNext) { m_RenderNext = false; Capture(); }
            return writer.WriteTexture(m_Texture, false);
        }

        public void Update() { }
        public void Reset() { m_RenderNext = false; }
        public CompressionSpec GetCompressionSpec() => new CompressionSpec(SensorCompressionType.PNG);
        public string GetName() => m_Name;

        public void Dispose()
        {
            if (m_Texture != null) UnityEngine.Object.Destroy(m_Texture);
        }

        void Capture()
        {
            var rt = RenderTexture.GetTemporary(m_Width, m_Height, 24, RenderTextureFormat.ARGB32);
            var prevActive = RenderTexture.active;
            var prevTarget = m_Camera.targetTexture;
            var prevRect = m_Camera.rect;
            m_Camera.rect = new Rect(0f, 0f, 1f, 1f);
            m_Camera.targetTexture = rt;
            m_Camera.Render();
            RenderTexture.active = rt;
            m_Texture.ReadPixels(new Rect(0, 0, m_Width, m_Height), 0, 0);
            m_Texture.Apply();
            m_Camera.targetTexture = prevTarget;
            m_Camera.rect = prevRect;
            RenderTexture.active = prevActive;
            RenderTexture.ReleaseTemporary(rt);
        }
    }

    /// <summary>Add to the Agent's GameObject. The image size is the player flag
    /// `--rls3-image-size N` if given, else `imageSize` (224 by default).</summary>
    public class Rls3CameraSensorComponent : SensorComponent
    {
        public Camera bridgeCamera;
        public int imageSize = 224;

        public Rls3CameraSensor Sensor { get; private set; }

        public override ISensor[] CreateSensors()
        {
            int size = Rls3Arranger.CommandLineInt("--rls3-image-size", imageSize);
            Sensor = new Rls3CameraSensor(bridgeCamera, size, size);
            return new ISensor[] { Sensor };
        }
    }
}
